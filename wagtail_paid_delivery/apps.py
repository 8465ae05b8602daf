from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class WagtailPaidDeliveryConfig(AppConfig):
    name = "wagtail_paid_delivery"
    label = "wagtail_paid_delivery"
    verbose_name = _("Paid delivery")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            receivers,  # noqa: F401  (connects the delivery email to purchase_paid)
        )
        from .defaults import ensure_default_copy
        from .schedules import ensure_schedules

        post_migrate.connect(ensure_default_copy, sender=self)
        post_migrate.connect(ensure_schedules, sender=self)
