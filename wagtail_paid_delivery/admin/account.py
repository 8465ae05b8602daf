"""The shop's part of a user's Wagtail account page: "Email me about new sales".

Registered with Wagtail's ``register_account_settings_panel`` hook, on the account page's
Notifications tab beside Wagtail's own moderation choices, and shown only to users who may
view purchases (``permissions.may_view_purchases``). The choice is stored in
``ShopNotificationPreference``; who is emailed is decided at each sale (``sale_notices``).
"""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _
from wagtail.admin.views.account import BaseSettingsPanel, notifications_tab

from .. import permissions
from ..models import ShopNotificationPreference


class ShopNotificationsForm(forms.ModelForm):
    class Meta:
        model = ShopNotificationPreference
        fields = ["email_new_sales"]
        help_texts = {
            "email_new_sales": _(
                "Every sale paid through Stripe: product, amount, buyer's address, test or live "
                "mode, and a link to the purchase. Sent while you may view purchases."
            )
        }


class ShopNotificationsPanel(BaseSettingsPanel):
    """The "Shop" panel of the account page's Notifications tab."""

    name = "paid_delivery_notifications"
    title = _("Shop")
    tab = notifications_tab
    #: After Wagtail's own notification choices (order 100).
    order = 300
    form_class = ShopNotificationsForm

    def is_active(self) -> bool:
        return permissions.may_view_purchases(self.user)

    def get_form(self) -> ShopNotificationsForm:
        # The user's own row, made when the account page is first saved with the panel on it.
        instance = ShopNotificationPreference.objects.filter(user=self.user).first()
        instance = instance or ShopNotificationPreference(user=self.user)
        data = self.request.POST if self.request.method == "POST" else None
        return ShopNotificationsForm(data, instance=instance, prefix=self.name)
