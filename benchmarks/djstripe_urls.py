"""dj-stripe's webhook URL (``/stripe/webhook/<endpoint uuid>/``), for benchmarks/webhook.py."""

from typing import Any

from django.urls import include, path

urlpatterns = [path("stripe/", include("djstripe.urls", namespace="djstripe"))]


def record_only(trigger: Any, api_key: str | None = None) -> None:
    """dj-stripe's deferred-processing hook: the trigger row is saved by the view itself."""
