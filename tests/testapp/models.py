"""Plain Wagtail pages: a home page to put products under, and an article whose StreamField
offers the app's ``BuyersOnlyBlock`` (as a site would add it)."""

from wagtail import blocks
from wagtail.admin.panels import FieldPanel
from wagtail.api import APIField
from wagtail.fields import StreamField
from wagtail.models import Page
from wagtail.search import index

from wagtail_paid_delivery.blocks import BuyersOnlyBlock


class HomePage(Page):
    pass


class ArticlePage(Page):
    body = StreamField(
        [("paragraph", blocks.RichTextBlock()), ("buyers_only", BuyersOnlyBlock())],
        blank=True,
    )

    content_panels = Page.content_panels + [FieldPanel("body")]
    search_fields = Page.search_fields + [index.SearchField("body")]
    api_fields = [APIField("body")]
    template = "testapp/article_page.html"
