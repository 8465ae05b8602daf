from django.apps import AppConfig


class HomeConfig(AppConfig):
    name = "sandbox.home"
    label = "home"
    verbose_name = "Sandbox home"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The console's purchase lines: checkout started, download served (activity.py).
        from . import activity  # noqa: F401
