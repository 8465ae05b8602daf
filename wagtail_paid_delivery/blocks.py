"""StreamField blocks for sites: ``BuyersOnlyBlock``, content only a product's owners read.

Add it to any StreamField::

    body = StreamField([("paragraph", blocks.RichTextBlock()), ("buyers_only", BuyersOnlyBlock())])

and render the field with ``{% include_block page.body %}`` (so the block sees the request).
Owners (``access.owns``) read the content; everyone else a short teaser with the product's buy
link and, when the library does not know them, a link to sign in. Without a request (a
``{{ page.body }}`` with no context, an email, a search index) nobody is an owner. The page
that renders it is sent ``Cache-Control: private`` and ``Vary: Cookie`` (``gate``). Its content
is kept out of the search index and of Wagtail's API.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from wagtail import blocks

from . import access, gate
from .models.pages import ProductPageMixin, product_page_models


class ProductChooserBlock(blocks.PageChooserBlock):
    """A page chooser offering only product pages (the bundled type or a site's own)."""

    @cached_property
    def target_models(self) -> list[Any]:
        return product_page_models()

    class Meta:
        icon = "tag"


class BuyersOnlyBlock(blocks.StructBlock):
    product = ProductChooserBlock(label=_("Product"))
    content = blocks.RichTextBlock(label=_("Content for buyers"))
    teaser = blocks.TextBlock(
        label=_("Teaser"),
        required=False,
        help_text=_("What everyone else reads, with the buy link. Empty: “For buyers of …”."),
    )

    class Meta:
        icon = "lock"
        label = _("For buyers only")
        template = "wagtail_paid_delivery/blocks/buyers_only.html"

    def get_context(self, value: Any, parent_context: Any = None) -> dict[str, Any]:
        context = super().get_context(value, parent_context=parent_context)
        request = (parent_context or {}).get("request")
        gate.mark_private(request)
        product = value.get("product")
        product = product.specific if product is not None else None
        # Wagtail's preview is rendered for an editor in the admin: they see what buyers see.
        preview = bool(getattr(request, "is_preview", False))
        context.update(
            {
                "owned": preview or access.owns(request, product),
                "preview": preview,
                "product": product if isinstance(product, ProductPageMixin) else None,
                "signed_in": request is not None and access.is_signed_in(request),
                "library_url": reverse("wagtail_paid_delivery:library"),
            }
        )
        return context

    def get_searchable_content(self, value: Any) -> list[str]:
        # The buyers' content must not surface in search results or their snippets.
        teaser = value.get("teaser") or ""
        return [teaser] if teaser else []

    def get_api_representation(self, value: Any, context: Any = None) -> dict[str, Any]:
        product = value.get("product")
        return {"product": product.pk if product else None, "teaser": value.get("teaser") or ""}
