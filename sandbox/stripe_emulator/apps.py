from django.apps import AppConfig


class StripeEmulatorConfig(AppConfig):
    name = "sandbox.stripe_emulator"
    label = "stripe_emulator"
    verbose_name = "Stripe emulator (sandbox only)"
    default_auto_field = "django.db.models.BigAutoField"
