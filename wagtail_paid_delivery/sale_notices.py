"""New sale notices: who on the shop's side is told about a sale, and what the email says.

A sale is a purchase paid through Stripe Checkout; a complimentary grant (the shop desk's) is
not one and notifies nobody. The notice goes to every address in ``NEW_SALE_EMAILS`` and to each
user who ticked "Email me about new sales" on their Wagtail account page (``admin.account``),
as long as the user is active and may view purchases (directly or through a group, or as a
superuser). ``outbox`` promises one notice per recipient with the purchase's delivery email and
asks :func:`is_recipient` again at every attempt, so losing the permission stops it.

The notice links to the purchase in the admin (``WAGTAILADMIN_BASE_URL``, Wagtail's own setting
for links in its notification emails), never to the buyer's download page: it carries no token.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from wagtail.admin.utils import get_admin_base_url

from . import payments, permissions
from .conf import app_settings
from .models import Purchase

#: The admin URL name of a purchase's inspect view (the shop desk's ``PurchaseViewSet``).
INSPECT_URL_NAME = "wagtail_paid_delivery_purchases:inspect"


def is_sale(purchase: Purchase) -> bool:
    """Whether ``purchase`` is told to the shop: paid through Checkout, not granted."""
    return purchase.source == Purchase.Source.CHECKOUT


def opted_in_staff() -> Any:
    """Active users who may view purchases and asked to be emailed about new sales."""
    policy = permissions.PurchasePermissionPolicy(Purchase)
    return (
        policy.users_with_any_permission([permissions.VIEW])
        .filter(paid_delivery_notifications__email_new_sales=True)
        .exclude(email="")
        .distinct()
    )


#: How long a process reuses the opted-in staff's addresses when it promises notices (every
#: purchase paid in a burst would otherwise ask Wagtail's permission policy again). A change
#: made in this process forgets them at once (``receivers``); one made in another process (the
#: admin's, while a task cluster pays) is seen within this many seconds. Losing the permission
#: or opting out stops a notice promised meanwhile: each attempt asks again, uncached.
STAFF_CACHE_SECONDS = 60.0

#: (when read, the addresses), per process.
_staff_cache: tuple[float, list[str]] | None = None


def _staff_addresses(cached: bool) -> list[str]:
    global _staff_cache
    now = time.monotonic()
    if cached and _staff_cache is not None and now - _staff_cache[0] < STAFF_CACHE_SECONDS:
        return _staff_cache[1]
    addresses = list(opted_in_staff().order_by("pk").values_list("email", flat=True))
    _staff_cache = (now, addresses)
    return addresses


def forget_staff() -> None:
    """Read the opted-in staff again at the next promise (a user, a group, a permission or a
    notification choice changed)."""
    global _staff_cache
    _staff_cache = None


def recipients(*, cached: bool = False) -> list[str]:
    """Every address a new sale is told to now: ``NEW_SALE_EMAILS``, then the opted-in staff,
    each address once (compared without case). ``cached``: the staff as read at most
    ``STAFF_CACHE_SECONDS`` ago (for promises; an attempt asks afresh)."""
    found: dict[str, str] = {}
    addresses = [*app_settings.new_sale_emails, *_staff_addresses(cached)]
    for address in addresses:
        found.setdefault(address.strip().lower(), address.strip())
    return list(found.values())


def is_recipient(address: str) -> bool:
    """Whether ``address`` is still told about new sales (asked at every attempt)."""
    wanted = address.strip().lower()
    return any(wanted == known.lower() for known in recipients())


def purchase_admin_url(purchase: Purchase) -> str:
    """The purchase's inspect view in the admin: absolute with ``WAGTAILADMIN_BASE_URL``, else
    only its path (Wagtail's own check wagtailadmin.W003 asks for the setting)."""
    try:
        path = reverse(INSPECT_URL_NAME, args=(purchase.pk,))
    except NoReverseMatch:  # the site does not mount the Wagtail admin
        return ""
    base = (get_admin_base_url() or "").rstrip("/")
    return f"{base}{path}"


def build_new_sale_email(purchase: Purchase, to: str) -> EmailMultiAlternatives:
    """The plain-text notice of ``purchase`` for ``to``. Test mode is said in the subject."""
    paid = payments.amount_paid(purchase)
    context = {
        "purchase": purchase,
        "site_name": getattr(settings, "WAGTAIL_SITE_NAME", ""),
        "product_title": purchase.product_title,
        "amount": paid.display,
        "currency": paid.currency,
        "note": paid.note,
        "buyer": purchase.email,
        "livemode": purchase.livemode,
        "paid_at": formats.date_format(
            timezone.localtime(purchase.paid_at or timezone.now()), "DATETIME_FORMAT"
        ),
        "admin_url": purchase_admin_url(purchase),
    }
    subject = _("New sale: %(product)s, %(amount)s") % {
        "product": purchase.product_title,
        "amount": paid.display,
    }
    if not purchase.livemode:
        subject = _("[TEST] %(subject)s") % {"subject": subject}
    return EmailMultiAlternatives(
        # Header injection is impossible (Django refuses newlines); keep the subject one line.
        subject=" ".join(str(subject).split()),
        body=render_to_string("wagtail_paid_delivery/email/new_sale.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
