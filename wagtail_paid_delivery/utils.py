"""Small lookups shared by views, tasks and checks."""

from __future__ import annotations

from django.apps import apps
from django.db.models import Model


def product_file_models() -> list[type[Model]]:
    """Every concrete product file model installed (the bundled one, or a site's own)."""
    from .models import AbstractProductFile

    return [
        model
        for model in apps.get_models()
        if issubclass(model, AbstractProductFile) and not model._meta.abstract
    ]


def product_page_models() -> list[type[Model]]:
    from .models import ProductPageMixin

    return [
        model
        for model in apps.get_models()
        if issubclass(model, ProductPageMixin) and not model._meta.abstract
    ]
