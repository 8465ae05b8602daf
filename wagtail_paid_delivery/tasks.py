"""django-q2 task functions. They take primary keys, parse, route and call; rules live elsewhere.

The broker delivers at least once, and the sweep may enqueue an event again, so every task is
idempotent: an event is *claimed* with a conditional UPDATE before it is worked on (two copies
of the task for one event never run it twice at once), an event already processed or ignored
is skipped, and ``fulfill_checkout`` itself fulfils a purchase only once.

Retrying is ours, not the broker's: django-q2 has no backoff and its Redis broker never
re-delivers a failed task. A failed event records its error, its attempts and a next-attempt
time (exponential backoff); ``sweep`` (scheduled every minute, see ``schedules.py``) enqueues
what is due, and also events that were stored but whose task was lost. ``next_attempt_at`` is
also the claim's lease: while a task is queued by the sweep or running, it lies in the future,
so nobody else starts the event until the lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import random
from datetime import datetime, timedelta
from typing import Any, get_args

import stripe
from django.db.models import F, Q
from django.utils import timezone

from . import fulfillment, stripe_api
from .conf import app_settings
from .fulfillment import FulfillmentResult, fulfill_checkout
from .models import Purchase, StripeEvent

logger = logging.getLogger(__name__)

TASK = "wagtail_paid_delivery.tasks.process_stripe_event"
TASK_GROUP = "wagtail_paid_delivery.stripe_events"

#: Events whose object is a Checkout Session: fulfil (or expire, or fail) that session.
SESSION_EVENT_TYPES = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
        "checkout.session.expired",
    }
)
#: Events whose object is a PaymentIntent (``id``) or carries one (``payment_intent``).
PAYMENT_INTENT_EVENT_TYPES = frozenset(
    {"payment_intent.succeeded", "charge.refunded", "charge.dispute.created"}
    | {"charge.dispute.closed"}
)
#: Events whose object is an Invoice carrying our metadata (Checkout's invoice_creation).
INVOICE_EVENT_TYPES = frozenset({"invoice.payment_succeeded"})
HANDLED_EVENT_TYPES = SESSION_EVENT_TYPES | PAYMENT_INTENT_EVENT_TYPES | INVOICE_EVENT_TYPES
#: Kept for code that imported it: the session events that can fulfil.
FULFILLING_EVENT_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)

#: A stored event still ``received`` this long after it arrived lost its task (cluster down,
#: broker lost it): the sweep enqueues it again.
STUCK_AFTER = timedelta(minutes=5)
#: Events the sweep enqueues per run; the rest wait for the next minute.
SWEEP_BATCH = 200
#: Pending purchases reconciliation checks per run (each costs one or two Stripe calls).
RECONCILE_BATCH = 50
#: How far back reconciliation looks: a Checkout Session lives 24 hours, plus a margin so a
#: session that just expired is seen expired once.
RECONCILE_WINDOW = timedelta(hours=25)
#: Purchases younger than this are left to the buyer's browser and the webhook.
RECONCILE_MIN_AGE = timedelta(minutes=2)

#: Stripe errors that mean "this request can never succeed" (an unknown session, a bad id).
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
)

#: How each fulfillment outcome is recorded on the event.
_EVENT_STATUS = {
    # Decided, with the reason kept in last_error: a refused purchase is marked failed, and an
    # unpaid session comes back with checkout.session.async_payment_succeeded.
    **{outcome: StripeEvent.Status.PROCESSED for outcome in get_args(fulfillment.Outcome)},
    "not_ours": StripeEvent.Status.IGNORED,
}


def lease() -> timedelta:
    """How long a claimed event is left alone: longer than a task may run (Q_CLUSTER timeout)."""
    from django_q.conf import Conf

    return max(timedelta(minutes=5), timedelta(seconds=2 * int(Conf.TIMEOUT or 0)))


def backoff(attempts: int) -> timedelta:
    """The wait before the next try after ``attempts`` failed ones: doubled each time, capped,
    plus up to 10% jitter so events that failed together (a Stripe outage) spread out."""
    base = app_settings.event_retry_delay
    delay = min(base * (2 ** max(0, attempts - 1)), app_settings.event_retry_max_delay)
    return delay + delay * random.uniform(0, 0.1)  # noqa: S311  (not for security)


def claim(event_pk: int, token: str | None = None) -> StripeEvent | None:
    """Take an event for processing, or None when it is not ours to run now.

    A conditional UPDATE (race-safe on every database): the event must still be waiting
    (``received`` or ``failed``) and either unleased, past its lease, or leased to us (the
    sweep passes the lease it wrote as ``token``). The claim counts an attempt and leases the
    event to this task.
    """
    now = timezone.now()
    free = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    if token:
        with contextlib.suppress(ValueError):
            free |= Q(next_attempt_at=datetime.fromisoformat(token))
    claimed = (
        StripeEvent.objects.filter(pk=event_pk)
        .filter(status__in=(StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED))
        .filter(free)
        .update(attempts=F("attempts") + 1, next_attempt_at=now + lease())
    )
    return StripeEvent.objects.filter(pk=event_pk).first() if claimed else None


def process_stripe_event(event_pk: int, token: str | None = None) -> str:
    """Act on a stored ``StripeEvent``; returns the outcome (also recorded on the event).

    Records ``attempts``, ``last_error``, ``processed_at`` and the purchase on the row. On an
    error the event is marked ``failed``: a transient one (Stripe unavailable, a bug) gets a
    ``next_attempt_at`` with backoff until ``MAX_EVENT_ATTEMPTS``; a permanent one (Stripe
    refused the request: an unknown session) none. The exception is re-raised so django-q2
    records a failed task; the event stays replayable (``manage.py reprocess``).
    """
    event = claim(event_pk, token)
    if event is None:
        current = StripeEvent.objects.filter(pk=event_pk).values_list("status", flat=True).first()
        if current is None:
            logger.warning("Stripe event %s no longer exists", event_pk)
            return "missing"
        # Done already, or another task holds it, or it waits for its next attempt.
        return f"skipped ({current})"

    try:
        result = route(event)
    except Exception as exc:
        _record_failure(event, exc)
        raise
    if result is None:
        return "ignored"
    status = _EVENT_STATUS.get(result.outcome, StripeEvent.Status.PROCESSED)
    _record(event.pk, status, result.reason if result.outcome != "fulfilled" else "", result)
    return result.outcome


def route(event: StripeEvent) -> FulfillmentResult | None:
    """Call the rule for the event's type. None: recorded as ignored here (nothing to do)."""
    obj = _data_object(event.payload)
    if event.type in SESSION_EVENT_TYPES:
        session_id = obj.get("id")
        if not isinstance(session_id, str) or not session_id:
            _record(event.pk, StripeEvent.Status.IGNORED, "no Checkout Session id in payload")
            return None
        return fulfill_checkout(session_id)
    if event.type in PAYMENT_INTENT_EVENT_TYPES:
        pi_id = obj.get("id") if event.type.startswith("payment_intent.") else None
        pi_id = pi_id or obj.get("payment_intent")
        if isinstance(pi_id, dict):
            pi_id = pi_id.get("id")
        if not isinstance(pi_id, str) or not pi_id:
            _record(event.pk, StripeEvent.Status.IGNORED, "no PaymentIntent in payload")
            return None
        return fulfillment.sync_payment_intent(pi_id)
    if event.type in INVOICE_EVENT_TYPES:
        metadata = obj.get("metadata")
        reference = metadata.get("wpd_purchase") if isinstance(metadata, dict) else None
        return fulfillment.sync_purchase_reference(reference)
    _record(event.pk, StripeEvent.Status.IGNORED, f"unhandled event type {event.type!r}")
    return None


def _record(event_pk: int, status: str, note: str, result: Any = None) -> None:
    updates: dict[str, Any] = {
        "status": status,
        "last_error": note,
        "processed_at": timezone.now(),
        "next_attempt_at": None,
    }
    purchase = getattr(result, "purchase", None)
    if purchase is not None:
        updates["purchase"] = purchase
    StripeEvent.objects.filter(pk=event_pk).update(**updates)


def _record_failure(event: StripeEvent, exc: Exception) -> None:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    attempts = event.attempts
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    permanent = isinstance(exc, PERMANENT_ERRORS)
    if permanent or attempts >= max_attempts:
        next_attempt = None
        why = "permanent error" if permanent else f"gave up after {attempts} attempts"
        error = f"{error} ({why}; run `manage.py reprocess {event.stripe_id}` once fixed)"
        logger.error(
            "Stripe event %s (%s) FAILED for good, %s: %s",
            event.stripe_id,
            event.type,
            why,
            exc,
        )
    else:
        next_attempt = timezone.now() + backoff(attempts)
        logger.warning(
            "Stripe event %s (%s) failed (attempt %s of %s), retrying at %s: %s",
            event.stripe_id,
            event.type,
            attempts,
            max_attempts,
            next_attempt.isoformat(timespec="seconds"),
            exc,
        )
    StripeEvent.objects.filter(pk=event.pk).update(
        status=StripeEvent.Status.FAILED, last_error=error, next_attempt_at=next_attempt
    )


def _data_object(payload: Any) -> dict[str, Any]:
    try:
        obj = payload["data"]["object"]
    except (KeyError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def due_events(now: datetime | None = None) -> Any:
    """Events the sweep should (re)start: failed ones whose next attempt is due (and that have
    attempts left), and received ones older than ``STUCK_AFTER`` whose lease (if any) ran out."""
    now = now or timezone.now()
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    lease_over = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    retry_due = Q(status=StripeEvent.Status.FAILED, next_attempt_at__lte=now)
    lost = Q(status=StripeEvent.Status.RECEIVED, received_at__lte=now - STUCK_AFTER) & lease_over
    return StripeEvent.objects.filter(retry_due | lost).filter(attempts__lt=max_attempts)


def sweep() -> str:
    """Enqueue Stripe events that are due for another attempt or whose task was lost.

    Each event is first leased with a conditional UPDATE, so two sweeps at once enqueue it once;
    the task is handed the lease as its token. Returns a short summary for the task log.
    """
    from .views.webhook import enqueue

    now = timezone.now()
    queued = 0
    for pk, old in (
        due_events(now).order_by("received_at").values_list("pk", "next_attempt_at")[:SWEEP_BATCH]
    ):
        until = now + lease()
        if not StripeEvent.objects.filter(pk=pk, next_attempt_at=old).update(next_attempt_at=until):
            continue  # another sweep (or the task itself) got there first
        enqueue(pk, token=until.isoformat())
        queued += 1
    exhausted = StripeEvent.objects.filter(
        status=StripeEvent.Status.FAILED, next_attempt_at__isnull=True
    ).count()
    if exhausted:
        logger.error(
            "%s Stripe event(s) failed for good; see the events list and run "
            "`manage.py reprocess --failed` once the cause is fixed.",
            exhausted,
        )
    return f"queued {queued}; failed for good {exhausted}"


def reconcile() -> str:
    """Ask Stripe about our own pending purchases whose session may still change.

    A shop whose webhook endpoint was wrong or disabled heals itself: every pending purchase
    younger than a session's lifetime (plus a margin) is passed through ``fulfill_checkout``
    (paid → fulfilled; expired → expired; failed → failed), the longest unchecked first, at
    most ``RECONCILE_BATCH`` per run. Returns a summary; stops early when Stripe is down.
    """
    now = timezone.now()
    pending = (
        Purchase.objects.filter(
            status=Purchase.Status.PENDING,
            source=Purchase.Source.CHECKOUT,
            created_at__gte=now - RECONCILE_WINDOW,
            created_at__lte=now - RECONCILE_MIN_AGE,
        )
        .exclude(stripe_checkout_session_id=None)
        .exclude(stripe_checkout_session_id="")
        .order_by("updated_at")
        .values_list("pk", "stripe_checkout_session_id")[:RECONCILE_BATCH]
    )
    counts: dict[str, int] = {}
    for pk, session_id in pending:
        try:
            result = fulfill_checkout(str(session_id))
        except stripe_api.StripeUnavailable as exc:
            logger.warning("Reconciliation stopped, Stripe is unavailable: %s", exc)
            counts["stripe unavailable"] = 1
            break
        except stripe.StripeError as exc:
            logger.error("Reconciliation: Stripe refused session %s: %s", session_id, exc)
            outcome = "error"
        else:
            outcome = result.outcome
            if outcome == "fulfilled":
                logger.warning(
                    "Reconciliation fulfilled purchase %s (session %s) that no webhook had: "
                    "check the Stripe webhook endpoint.",
                    pk,
                    session_id,
                )
        counts[outcome] = counts.get(outcome, 0) + 1
        # Checked now: the next run starts with the others.
        Purchase.objects.filter(pk=pk).update(updated_at=timezone.now())
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing pending"


def send_delivery_email(purchase_pk: int) -> str:
    """Issue a link and email it to the buyer, once per purchase (rules: emails.deliver_purchase).

    Raises on a mail failure so django-q2 records the failed task; retrying it is safe.
    """
    from .emails import deliver_purchase

    return deliver_purchase(purchase_pk)


def resend_links(email: str, product_id: int | None = None) -> str:
    """Email fresh links to ``email`` if it has paid purchases (rules: emails.resend_links).

    The resend view enqueues this for every address it accepts, so whether the address bought is
    decided here, out of the request: the page's answer and timing say nothing about it.
    """
    from .emails import resend_links as resend

    return resend(email, product_id)
