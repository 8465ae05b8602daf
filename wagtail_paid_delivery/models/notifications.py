"""What the shop's staff asked to be told about (their Wagtail account's Notifications tab)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class ShopNotificationPreference(models.Model):
    """One user's choices, edited on their Wagtail account page (``admin.account``).

    Only a choice: whether the user is told is decided when a sale happens, by who holds the
    purchases' view permission then (``sale_notices.recipients``).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.CASCADE,
        related_name="paid_delivery_notifications",
    )
    #: Email me about every new sale (paid through Stripe Checkout; grants are not sales).
    email_new_sales = models.BooleanField(_("Email me about new sales"), default=False)

    class Meta:
        verbose_name = _("shop notification preference")
        verbose_name_plural = _("shop notification preferences")

    def __str__(self) -> str:
        return f"{self.user}: new sales {'on' if self.email_new_sales else 'off'}"
