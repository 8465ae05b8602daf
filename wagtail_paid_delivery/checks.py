"""System checks that turn configuration mistakes into clear messages at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import SETTINGS_NAME, app_settings

ID = "wagtail_paid_delivery"


def _inside(path: Path, parent: Any) -> bool:
    if not parent:
        return False
    parent_path = Path(parent).resolve()
    return path == parent_path or parent_path in path.parents


@register(Tags.compatibility)
def check_installed_apps(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for app, why in (
        ("private_storage", "product files are stored with django-private-storage"),
        ("django_q", "webhooks are processed by django-q2 tasks"),
    ):
        if not apps.is_installed(app):
            errors.append(
                Error(
                    f"'{app}' is not in INSTALLED_APPS.",
                    hint=f"Add '{app}' to INSTALLED_APPS: {why}.",
                    id=f"{ID}.E003" if app == "private_storage" else f"{ID}.E004",
                )
            )
    return errors


@register(Tags.security)
def check_private_storage_root(**kwargs: Any) -> list[CheckMessage]:
    root = getattr(settings, "PRIVATE_STORAGE_ROOT", None)
    if not root:
        return [
            Error(
                "PRIVATE_STORAGE_ROOT is not set.",
                hint="Set PRIVATE_STORAGE_ROOT to a folder outside MEDIA_ROOT and STATIC_ROOT "
                "that the web server does not serve; paid files are stored there.",
                id=f"{ID}.E001",
            )
        ]
    path = Path(root).resolve()
    for name in ("MEDIA_ROOT", "STATIC_ROOT"):
        if _inside(path, getattr(settings, name, None)):
            return [
                Error(
                    f"PRIVATE_STORAGE_ROOT ({root}) is inside {name}.",
                    hint=f"Files under {name} are publicly served. Move PRIVATE_STORAGE_ROOT "
                    "to a folder of its own.",
                    id=f"{ID}.E002",
                )
            ]
    return []


@register(Tags.compatibility)
def check_q_cluster(**kwargs: Any) -> list[CheckMessage]:
    conf = getattr(settings, "Q_CLUSTER", None) or {}
    timeout = conf.get("timeout")
    if not timeout:
        return [
            Error(
                "Q_CLUSTER has no 'timeout'.",
                hint="Set Q_CLUSTER['timeout'] (seconds a task may run, e.g. 60) and "
                "Q_CLUSTER['retry'] larger than it.",
                id=f"{ID}.E005",
            )
        ]
    retry = conf.get("retry", 60)  # django-q2's default
    if retry <= timeout:
        return [
            Error(
                f"Q_CLUSTER['retry'] ({retry}) is not greater than Q_CLUSTER['timeout'] "
                f"({timeout}).",
                hint="The broker would hand a still-running task to a second worker. "
                "Set 'retry' larger than 'timeout', e.g. timeout 60 and retry 90.",
                id=f"{ID}.E006",
            )
        ]
    return []


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    try:
        tolerance = app_settings.WEBHOOK_TOLERANCE
        limit = app_settings.DOWNLOAD_LIMIT
    except Exception as exc:  # unknown keys, not a dict
        return [Error(str(exc), id=f"{ID}.E000")]
    if not tolerance or tolerance <= 0:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['WEBHOOK_TOLERANCE'] is {tolerance!r}.",
                hint="A tolerance of 0 turns off the replay check on webhook signatures. "
                "Use 300 seconds (Stripe's default).",
                id=f"{ID}.E007",
            )
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['DOWNLOAD_LIMIT'] is {limit!r}.",
                hint="Use a whole number of downloads per file (at least 1), or None for "
                "unlimited.",
                id=f"{ID}.E008",
            )
        )
    return messages


def _stripe_credentials_missing() -> list[str]:
    missing = []
    if not app_settings.STRIPE_SECRET_KEY:
        missing.append("STRIPE_SECRET_KEY")
    if not app_settings.webhook_secrets:
        missing.append("STRIPE_WEBHOOK_SECRETS")
    return missing


@register(Tags.compatibility)
def check_stripe_credentials(**kwargs: Any) -> list[CheckMessage]:
    # Only a warning here, so a site runs locally without Stripe; `check --deploy` makes it an
    # error.
    return [
        Warning(
            f"{SETTINGS_NAME}['{key}'] is not set: checkout and fulfillment are off.",
            hint="Fine while developing. Set it before taking payments.",
            id=f"{ID}.W001" if key == "STRIPE_SECRET_KEY" else f"{ID}.W002",
        )
        for key in _safe_missing()
    ]


@register(Tags.security, deploy=True)
def check_stripe_credentials_deploy(**kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"{SETTINGS_NAME}['{key}'] is not set.",
            hint="A production site cannot take or confirm payments without it. "
            "Find it in the Stripe Dashboard (Developers: API keys and Webhooks).",
            id=f"{ID}.E101" if key == "STRIPE_SECRET_KEY" else f"{ID}.E102",
        )
        for key in _safe_missing()
    ]


def _safe_missing() -> list[str]:
    try:
        return _stripe_credentials_missing()
    except Exception:  # reported by check_settings
        return []


@register(Tags.models)
def check_product_app_with_custom_base_page(**kwargs: Any) -> list[CheckMessage]:
    import swapper

    if apps.is_installed("wagtail_paid_delivery.product") and swapper.is_swapped(
        "wagtailcore", "Page"
    ):
        return [
            Error(
                "wagtail_paid_delivery.product is installed, but this site has its own base Page "
                "(WAGTAIL_PAGE_MODEL).",
                hint="Remove 'wagtail_paid_delivery.product' from INSTALLED_APPS and define your "
                "product page from ProductPageMixin and your base Page (see the README).",
                id=f"{ID}.E009",
            )
        ]
    return []
