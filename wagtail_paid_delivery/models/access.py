"""Pages for buyers only: which page (and its subtree) needs which product (see ``access``)."""

from __future__ import annotations

import swapper
from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class BuyersOnlyRestriction(models.Model):
    """A page and its descendants are shown only to owners of ``product``.

    Wagtail's own privacy (``PageViewRestriction``) has fixed kinds, so this lives beside it and
    is enforced by a ``before_serve_page`` hook (``gate``). The product is SET_NULL, never
    CASCADE: deleting the product must not quietly make the page public; a restriction without
    its product shows the page to nobody until an editor fixes it.
    """

    page = models.OneToOneField(
        swapper.get_model_name("wagtailcore", "Page"),
        verbose_name=_("page"),
        on_delete=models.CASCADE,
        related_name="buyers_only_restriction",
    )
    product = models.ForeignKey(
        swapper.get_model_name("wagtailcore", "Page"),
        verbose_name=_("product"),
        null=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("updated by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    class Meta:
        verbose_name = _("buyers-only restriction")
        verbose_name_plural = _("buyers-only restrictions")

    def __str__(self) -> str:
        return f"Buyers only: page {self.page_id}, product {self.product_id}"
