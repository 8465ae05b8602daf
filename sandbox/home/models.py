"""The sandbox's pages: the home page (a short welcome, the live products and the articles below
it) and an article whose StreamField offers the shop's ``BuyersOnlyBlock``."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _
from wagtail import blocks
from wagtail.admin.panels import FieldPanel
from wagtail.fields import RichTextField, StreamField
from wagtail.models import Page

from wagtail_paid_delivery.blocks import BuyersOnlyBlock
from wagtail_paid_delivery.product.models import ProductPage


class HomePage(Page):
    intro = models.TextField(_("introduction"), blank=True)
    body = RichTextField(_("body"), blank=True)

    content_panels = Page.content_panels + [FieldPanel("intro"), FieldPanel("body")]

    template = "home/home_page.html"
    max_count = 1
    parent_page_types = ["wagtailcore.Page"]

    class Meta:
        verbose_name = _("home page")

    def get_products(self) -> models.QuerySet[ProductPage]:
        return (
            ProductPage.objects.live()
            .public()
            .descendant_of(self)
            .order_by("path")
            .prefetch_related("files")
        )

    def get_context(self, request: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context(request, *args, **kwargs)
        context["products"] = self.get_products()
        context["articles"] = ArticlePage.objects.live().public().child_of(self).order_by("path")
        return context


class ArticlePage(Page):
    """A page of text, as a site has many: parts of it (a ``BuyersOnlyBlock``), or all of it (a
    "Buyers only" restriction set in the admin), may be for a product's buyers only."""

    intro = models.TextField(_("introduction"), blank=True)
    body = StreamField(
        [
            ("paragraph", blocks.RichTextBlock(label=_("Paragraph"))),
            ("buyers_only", BuyersOnlyBlock()),
        ],
        blank=True,
    )

    content_panels = Page.content_panels + [FieldPanel("intro"), FieldPanel("body")]

    template = "home/article_page.html"
    parent_page_types = ["home.HomePage", "home.ArticlePage"]

    class Meta:
        verbose_name = _("article")
