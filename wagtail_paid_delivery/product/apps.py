from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ProductConfig(AppConfig):
    name = "wagtail_paid_delivery.product"
    label = "wagtail_paid_delivery_product"
    verbose_name = _("Paid delivery products")
    default_auto_field = "django.db.models.BigAutoField"
