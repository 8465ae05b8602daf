"""What a bundle includes: an ordered list of other product pages, edited inline on the bundle.

A row of its own app (not of each concrete product app) because it points at the swappable
base Page on both ends, like Wagtail's own comments: every product page type, the bundled
``ProductPage`` and a site's own, gets the inline without a migration of its own. The editor's
rules (product pages only, not itself, no bundle inside a bundle, published at publish time) are
``bundles.problems``, checked by the product page's form.
"""

from __future__ import annotations

from typing import Any

import swapper
from django.db import models
from django.utils.translation import gettext_lazy as _
from modelcluster.fields import ParentalKey
from wagtail.admin.panels import FieldPanel
from wagtail.admin.widgets import AdminPageChooser
from wagtail.models import Orderable

from .pages import product_page_models

PAGE_MODEL = swapper.get_model_name("wagtailcore", "Page")


class ProductPageChooser(AdminPageChooser):
    """A page chooser that offers product pages only (every installed product page type,
    found when the editor's form is built, after the apps loaded)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("target_models", product_page_models() or None)
        super().__init__(**kwargs)


class BundleItem(Orderable):
    """One product included in a bundle (``bundle``), in the editor's order."""

    bundle = ParentalKey(PAGE_MODEL, related_name="bundle_items", on_delete=models.CASCADE)
    # CASCADE: a product that no paid purchase holds may go; one bought through a bundle is a
    # sold product (its included purchase protects it in ``wagtail_hooks``).
    product = models.ForeignKey(
        PAGE_MODEL,
        verbose_name=_("included product"),
        on_delete=models.CASCADE,
        related_name="+",
    )

    panels = [FieldPanel("product", widget=ProductPageChooser)]

    class Meta(Orderable.Meta):
        verbose_name = _("included product")
        verbose_name_plural = _("included products")

    def __str__(self) -> str:
        return str(self.product)
