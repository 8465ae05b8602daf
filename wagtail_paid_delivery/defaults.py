"""Data a new site should never be without, made after ``migrate``."""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS


def ensure_default_copy(*, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """Create the default DeliveryCopy (the built-in words) if the site has none."""
    from .models import DeliveryCopy

    if not DeliveryCopy.objects.using(using).exists():
        DeliveryCopy.objects.db_manager(using).get_default()
