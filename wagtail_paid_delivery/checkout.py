"""Checkout rules: which purchase a Buy click makes (or reuses) and the Checkout Session for it.

The view (``views/checkout.py``) checks the request and answers; everything it asks here takes
plain values, not the request. Success and cancel URLs come from the Wagtail Site the product
belongs to, never from the request, so a forged Host header cannot send a buyer (and their
session id) elsewhere. Nothing is left pending without a session: a Purchase whose session
Stripe refused (a rejected key, a bad parameter) is deleted, one whose session may exist (Stripe
unreachable) is marked failed through the state machine (``fulfillment.fail_checkout``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse
from django.utils import timezone

from . import fulfillment, metadata, stripe_api
from .conf import SETTINGS_NAME, app_settings
from .models import Purchase
from .prices import stripe_price_problems

logger = logging.getLogger(__name__)

#: An open purchase is reused for a second click only while its Checkout Session is surely
#: still open (sessions expire after 24 hours, and so do Stripe's idempotency keys).
REUSE_WINDOW = timedelta(hours=23)


class CheckoutUnavailable(Exception):
    """Checkout cannot start now; the buyer sees the "checkout unavailable" copy (503)."""


@dataclass
class CheckoutStarted:
    purchase: Purchase
    url: str
    reused: bool


def success_url(page: Any) -> str:
    root = page.get_site().root_url.rstrip("/")
    return f"{root}{reverse('wagtail_paid_delivery:success')}?session_id={{CHECKOUT_SESSION_ID}}"


def session_params(purchase: Purchase, page: Any, customer_email: str | None) -> dict[str, Any]:
    """The Checkout Session to create for ``purchase``.

    Built from the purchase's snapshot (not the live page), so a second click sends exactly the
    same parameters and Stripe answers its idempotency key with the same session.
    """
    if page.stripe_price_id:
        line_item: dict[str, Any] = {"price": page.stripe_price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": purchase.currency.lower(),
                "unit_amount": purchase.amount,
                "product_data": {"name": purchase.product_title},
            },
            "quantity": 1,
        }
    tags = metadata.for_purchase(purchase.public_id, page.pk)
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": str(purchase.public_id),
        "metadata": tags,
        "payment_intent_data": {"metadata": dict(tags)},
        "success_url": success_url(page),
        "cancel_url": page.get_full_url(),
    }
    if customer_email:
        params["customer_email"] = customer_email
    params.update(checkout_options(tags))
    return params


def checkout_options(tags: dict[str, str]) -> dict[str, Any]:
    """Session params for the site's ``CHECKOUT_OPTIONS`` (validated by the system checks)."""
    options = app_settings.CHECKOUT_OPTIONS or {}
    params: dict[str, Any] = {}
    if options.get("allow_promotion_codes"):
        params["allow_promotion_codes"] = True
    if options.get("automatic_tax"):
        params["automatic_tax"] = {"enabled": True}
    if options.get("tax_id_collection"):
        params["tax_id_collection"] = {"enabled": True}
    if options.get("invoice_creation"):
        # The invoice carries our metadata too, so invoice.payment_succeeded maps back to us.
        params["invoice_creation"] = {"enabled": True, "invoice_data": {"metadata": tags}}
    if options.get("locale"):
        params["locale"] = options["locale"]
    if options.get("require_terms"):
        params["consent_collection"] = {"terms_of_service": "required"}
        if options.get("terms_message"):
            params["custom_text"] = {
                "terms_of_service_acceptance": {"message": options["terms_message"]}
            }
    return params


def idempotency_key(purchase: Purchase) -> str:
    return f"wpd-checkout-{purchase.public_id}"


def check_stripe_price(page: Any) -> None:
    """Refuse to sell through a Stripe Price that no longer matches the page's price."""
    try:
        problems = stripe_price_problems(page.stripe_price_id, page.price_amount, page.currency)
    except stripe_api.StripeUnavailable as exc:
        raise CheckoutUnavailable(f"Stripe unavailable checking {page.stripe_price_id}") from exc
    except stripe_api.StripeKeyRejected as exc:
        _log_refused(page, exc)
        raise CheckoutUnavailable(str(exc)) from exc
    if problems:
        logger.error(
            "Product %s (page %s): Stripe Price %s cannot be sold: %s. Checkout refused.",
            page.title,
            page.pk,
            page.stripe_price_id,
            " ".join(str(problem) for problem in problems),
        )
        raise CheckoutUnavailable(f"Price {page.stripe_price_id} does not match")


def find_open_purchase(page: Any, bound_ids: Iterable[str]) -> Purchase | None:
    """The open purchase of ``page`` at today's price among ``bound_ids`` (the purchases this
    browser started), for a repeated click."""
    ids = [uid for uid in map(metadata.parse_uuid, bound_ids) if uid is not None]
    if not ids:
        return None
    return (
        Purchase.objects.filter(
            public_id__in=ids,
            product_id=page.pk,
            source=Purchase.Source.CHECKOUT,
            status=Purchase.Status.PENDING,
            amount=page.price_amount,
            currency=page.currency,
            created_at__gte=timezone.now() - REUSE_WINDOW,
        )
        .exclude(stripe_checkout_session_id=None)
        .order_by("-created_at")
        .first()
    )


def _create_session(purchase: Purchase, page: Any, email: str | None) -> Any:
    return stripe_api.create_checkout_session(
        session_params(purchase, page, email), idempotency_key=idempotency_key(purchase)
    )


def _reuse(purchase: Purchase, page: Any, email: str | None) -> CheckoutStarted | None:
    try:
        session = _create_session(purchase, page, email)
    except (stripe_api.StripeProblem, ImproperlyConfigured) as exc:
        # The earlier session may well still be payable: leave that purchase alone and start
        # afresh (a changed e-mail makes Stripe refuse the replayed key, for one).
        logger.warning("Could not reuse purchase %s: %s", purchase.public_id, exc)
        return None
    if session.id == purchase.stripe_checkout_session_id and session.url:
        return CheckoutStarted(purchase, session.url, reused=True)
    return None


def _log_refused(page: Any, exc: Exception) -> None:
    if isinstance(exc, stripe_api.StripeKeyRejected):
        # A configuration mistake, not a bug: no traceback, and say what to fix.
        logger.error(
            "Stripe REJECTED the secret key (%s['STRIPE_SECRET_KEY']): %s. Checkout for "
            "product %s (page %s) is unavailable until the key is fixed (`manage.py check` "
            "recognises publishable and malformed keys); no purchase was kept.",
            SETTINGS_NAME,
            exc,
            page.title,
            page.pk,
        )
        return
    logger.error(
        "Checkout for product %s (page %s) refused, no purchase kept: %s",
        page.title,
        page.pk,
        exc,
        exc_info=not isinstance(exc, ImproperlyConfigured),
    )


def start_checkout(
    page: Any, *, user: Any = None, bound_ids: Iterable[str] = ()
) -> CheckoutStarted:
    """Create (or reuse one of ``bound_ids``') pending Purchase and its Checkout Session.

    ``user``: the signed-in buyer, if any (their address is passed to Stripe). Raises
    ``CheckoutUnavailable``. A Purchase created here is then deleted when Stripe refused the
    session (a rejected key, a bad parameter: nothing exists at Stripe) and marked ``failed``
    with the reason when Stripe could not be reached (a session may exist, unpaid).
    """
    if page.stripe_price_id:
        check_stripe_price(page)
    if user is not None and not user.is_authenticated:
        user = None
    email = (getattr(user, "email", "") or None) if user is not None else None

    open_purchase = find_open_purchase(page, bound_ids)
    if open_purchase is not None:
        reused = _reuse(open_purchase, page, email)
        if reused is not None:
            return reused

    purchase = Purchase.objects.create(
        product=page,
        product_title=page.title[:255],
        amount=page.price_amount,
        currency=page.currency,
        user=user,
        source=Purchase.Source.CHECKOUT,
        status=Purchase.Status.PENDING,
    )
    try:
        session = _create_session(purchase, page, email)
        if not session.url:
            raise CheckoutUnavailable(f"Checkout Session {session.id} has no url")
    except (stripe_api.StripeRefused, ImproperlyConfigured) as exc:
        # Stripe made nothing (it refused, or was never asked): the purchase never began, and a
        # row kept for it would only pile up while, say, the key stays wrong.
        _log_refused(page, exc)
        purchase.delete()
        raise CheckoutUnavailable(str(exc)) from exc
    except (stripe_api.StripeUnavailable, CheckoutUnavailable) as exc:
        # A session may exist (an answer lost on the way); the buyer never got its URL, so it
        # cannot be paid. The purchase is kept, failed, with the reason.
        logger.error(
            "Checkout for product %s (page %s) failed; purchase %s marked failed: %s",
            page.title,
            page.pk,
            purchase.public_id,
            exc,
            exc_info=not isinstance(exc, stripe_api.StripeUnavailable),
        )
        fulfillment.fail_checkout(purchase, f"Checkout Session could not be created: {exc}")
        raise CheckoutUnavailable(str(exc)) from exc
    purchase.stripe_checkout_session_id = session.id
    purchase.livemode = bool(getattr(session, "livemode", False))
    purchase.save(update_fields=["stripe_checkout_session_id", "livemode", "updated_at"])
    return CheckoutStarted(purchase, session.url, reused=False)
