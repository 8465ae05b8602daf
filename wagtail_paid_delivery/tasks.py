"""django-q2 task functions. They take primary keys, parse, route and call; rules live elsewhere.

The broker delivers at least once, so every task is idempotent: an event already processed or
ignored is skipped, and ``fulfill_checkout`` itself fulfils a purchase only once.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import F
from django.utils import timezone

from .fulfillment import fulfill_checkout
from .models import StripeEvent

logger = logging.getLogger(__name__)

#: Event types handled by fulfilling the Checkout Session they carry.
FULFILLING_EVENT_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)

#: How each fulfillment outcome is recorded on the event.
_EVENT_STATUS = {
    "fulfilled": StripeEvent.Status.PROCESSED,
    "already_paid": StripeEvent.Status.PROCESSED,
    # Decided, with the reason kept in last_error: a refused purchase is marked failed, and an
    # unpaid session comes back with checkout.session.async_payment_succeeded.
    "refused": StripeEvent.Status.PROCESSED,
    "not_paid": StripeEvent.Status.PROCESSED,
    "not_ours": StripeEvent.Status.IGNORED,
}


def process_stripe_event(event_pk: int) -> str:
    """Act on a stored ``StripeEvent``; returns the outcome (also recorded on the event).

    Records ``attempts``, ``last_error``, ``processed_at`` and the purchase on the row. On an
    error (Stripe unavailable, a bug) the event is marked ``failed`` and the exception re-raised
    so django-q2 records a failed task; the event stays replayable.
    """
    event = StripeEvent.objects.filter(pk=event_pk).first()
    if event is None:
        logger.warning("Stripe event %s no longer exists", event_pk)
        return "missing"
    if event.status in (StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED):
        return f"skipped ({event.status})"

    if event.type not in FULFILLING_EVENT_TYPES:
        _record(event_pk, StripeEvent.Status.IGNORED, f"unhandled event type {event.type!r}")
        return "ignored"
    session_id = _object_id(event.payload)
    if not session_id:
        _record(event_pk, StripeEvent.Status.IGNORED, "no Checkout Session id in payload")
        return "ignored"

    try:
        result = fulfill_checkout(session_id)
    except Exception as exc:
        StripeEvent.objects.filter(pk=event_pk).update(
            status=StripeEvent.Status.FAILED,
            attempts=F("attempts") + 1,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        logger.warning("Stripe event %s failed: %s", event.stripe_id, exc)
        raise

    _record(
        event_pk,
        _EVENT_STATUS[result.outcome],
        result.reason if result.outcome != "fulfilled" else "",
        purchase=result.purchase,
    )
    return result.outcome


def _record(event_pk: int, status: str, note: str, *, purchase: Any = None) -> None:
    updates: dict[str, Any] = {
        "status": status,
        "attempts": F("attempts") + 1,
        "last_error": note,
        "processed_at": timezone.now(),
        "next_attempt_at": None,
    }
    if purchase is not None:
        updates["purchase"] = purchase
    StripeEvent.objects.filter(pk=event_pk).update(**updates)


def _object_id(payload: Any) -> str:
    try:
        value = payload["data"]["object"]["id"]
    except (KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else ""


def send_delivery_email(purchase_pk: int) -> str:
    """Issue a link and email it to the buyer, once per purchase (rules: emails.deliver_purchase).

    Raises on a mail failure so django-q2 records the failed task; retrying it is safe.
    """
    from .emails import deliver_purchase

    return deliver_purchase(purchase_pk)
