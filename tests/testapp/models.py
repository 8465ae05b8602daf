"""A plain Wagtail page, so tests have a home page to put products under."""

from wagtail.models import Page


class HomePage(Page):
    pass
