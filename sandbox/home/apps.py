from django.apps import AppConfig


class HomeConfig(AppConfig):
    name = "sandbox.home"
    label = "home"
    verbose_name = "Sandbox home"
    default_auto_field = "django.db.models.BigAutoField"
