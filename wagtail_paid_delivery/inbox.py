"""The Stripe event inbox: which events are ours, store, enqueue, claim, retry, record.

Every verified webhook is stored (``StripeEvent``, unique on Stripe's id) before Stripe gets its
200, then handed to django-q2. The broker delivers at least once, and the sweep may enqueue an
event again, so processing is idempotent: an event is *claimed* with a conditional UPDATE before
it is worked on (two copies of the task for one event never run it at once), an event already
processed or ignored is skipped, and ``fulfill_checkout`` fulfils a purchase only once.

Retrying is ours, not the broker's: django-q2 has no backoff and its Redis broker never
re-delivers a failed task. A failed event records its error, its attempts and a next-attempt
time (exponential backoff); :func:`sweep` (scheduled every minute) enqueues what is due, and also
events that were stored but whose task was lost. ``next_attempt_at`` is also the claim's lease:
while a task is queued by the sweep or running, it lies in the future, so nobody else starts the
event until the lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, get_args

from django.db import IntegrityError, router, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import fulfillment, metadata, outbox, retry, stripe_api
from .conf import app_settings
from .fulfillment import FulfillmentResult
from .models import StripeEvent

logger = logging.getLogger(__name__)

#: The django-q2 task that processes one stored event (queued tasks store this path).
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

#: Objects that carry our metadata (written by checkout on the session, its PaymentIntent and,
#: with invoice creation on, its invoice): checked on arrival, for free.
_METADATA_OBJECTS = ("checkout.session.", "payment_intent.", "invoice.")

#: A stored event still ``received`` this long after it arrived lost its task (cluster down,
#: broker lost it): the sweep enqueues it again.
STUCK_AFTER = timedelta(minutes=5)
#: Events the sweep enqueues per run; the rest wait for the next minute.
SWEEP_BATCH = 200

#: How each fulfillment outcome is recorded on the event: decided, with the reason kept in
#: last_error (a refused purchase is marked failed; an unpaid session comes back later).
_EVENT_STATUS = {
    **{outcome: StripeEvent.Status.PROCESSED for outcome in get_args(fulfillment.Outcome)},
    "not_ours": StripeEvent.Status.IGNORED,
}


# Arrival -------------------------------------------------------------------------------------


def ignore_reason(event: dict[str, Any]) -> str:
    """Why a verified event is not ours to act on; empty when it is. Reads the payload only.

    Sessions, PaymentIntents and invoices carry our metadata, so another integration's are
    told apart here. Charges and disputes may not (a charge copies its PaymentIntent's metadata
    when it is created; a dispute has none): they need a PaymentIntent, and processing maps it
    to one of our purchases (or finds it is not ours) by asking our database and then Stripe.
    """
    event_type = event.get("type")
    if event_type not in HANDLED_EVENT_TYPES:
        return f"unhandled event type {event_type!r}"
    if bool(event.get("livemode")) != stripe_api.secret_key_is_live():
        # A test-mode event reaching a live site (or the reverse) is a misrouted endpoint.
        return "livemode does not match the configured secret key"
    obj = _data_object(event)
    if not obj:
        return "no object in payload"
    if str(event_type).startswith(_METADATA_OBJECTS):
        return _tagged_object_problem(str(event_type), obj)
    return _charge_problem(obj)


def _charge_problem(obj: dict[str, Any]) -> str:
    """A charge or a dispute: ours to look at if it names a PaymentIntent of no other site."""
    if not obj.get("payment_intent"):
        return "no PaymentIntent (not a Checkout payment)"
    if not stripe_api.looks_like_id(payment_intent_id(obj), "pi_"):
        return "no PaymentIntent id in payload"
    tags = obj.get("metadata")
    installation = tags.get(metadata.INSTALLATION) if isinstance(tags, dict) else None
    if installation and installation != app_settings.installation_id:
        return "not this installation's payment"
    return ""


def _tagged_object_problem(event_type: str, obj: dict[str, Any]) -> str:
    """A session, a PaymentIntent or an invoice: ours only with our metadata."""
    tags = obj.get("metadata")
    if not isinstance(tags, dict):
        return "no metadata"
    if not metadata.is_ours(tags):
        # Another integration (or another site) on the same Stripe account.
        return "not this installation's checkout session"
    if not tags.get(metadata.PURCHASE):
        return "no purchase id in metadata"
    return _object_id_problem(event_type, obj)


#: The id each event's object must carry for processing to look it up at Stripe, by prefix.
_OBJECT_IDS = {
    "checkout.session.": ("cs_", "Checkout Session"),
    "payment_intent.": ("pi_", "PaymentIntent"),
}


def _object_id_problem(event_type: str, obj: dict[str, Any]) -> str:
    """Why the object's own id cannot be one Stripe gave (so processing would only ask Stripe
    about junk); empty when it can. Invoices are found by our metadata, not their id."""
    for type_prefix, (id_prefix, name) in _OBJECT_IDS.items():
        if event_type.startswith(type_prefix) and not stripe_api.looks_like_id(
            obj.get("id"), id_prefix
        ):
            return f"no {name} id in payload"
    return ""


class Stored(Enum):
    QUEUED = "ok"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"


def store(event: dict[str, Any], text: str | None = None) -> Stored:
    """Keep a verified event and queue it for processing (ours) or record why not (ignored).

    ``text``: the JSON ``event`` was parsed from, stored as it is (``stripe_api.read_webhook``
    says when it can be: checked strictly, so reading it back gives ``event``); without it the
    event is serialised.

    One transaction: the event's row (a redelivery, or a delivery racing this one, finds the
    first row and changes nothing) and, with django-q2's ORM broker on the same database, the
    task's row, queued by ``async_task`` inside it: a webhook costs four statements (BEGIN,
    two INSERTs, COMMIT) and a duplicate three. Other brokers enqueue on commit.
    """
    reason = ignore_reason(event)
    using = router.db_for_write(StripeEvent)
    connection = transaction.get_connection(using)
    insert_event = _event_insert(
        connection,
        {
            "stripe_id": event["id"],
            "type": str(event.get("type") or "")[:100],
            "livemode": bool(event.get("livemode")),
            "api_version": str(event.get("api_version") or "")[:64],
            "payload": event,
            "received_at": timezone.now(),
            "status": StripeEvent.Status.IGNORED if reason else StripeEvent.Status.RECEIVED,
            "attempts": 0,
            # For an ignored event this field says why, for the admin's events list.
            "last_error": reason,
        },
        text,
    )
    same_transaction = not reason and _enqueues_in_same_transaction()
    with transaction.atomic(using=using):
        pk = insert_event()
        if pk is not None and not reason:
            if same_transaction:
                # django-q2's own async_task, inside the event's transaction: its ORM broker
                # inserts the task's row here. No savepoint and no catch: if that row cannot be
                # written, the event's goes too and the view answers 500, so Stripe delivers
                # the event again. The task names Stripe's event id (``claim`` takes either).
                _queue_task(event["id"])
            else:
                transaction.on_commit(lambda: enqueue(pk), using=using)
    if pk is None:
        logger.info("Duplicate Stripe event %s", event["id"])
        return Stored.DUPLICATE
    if reason:
        logger.info("Ignored Stripe event %s (%s): %s", event["id"], event.get("type"), reason)
        return Stored.IGNORED
    return Stored.QUEUED


#: The columns the event's insert writes, in its statement's order.
_INSERTED = (
    "stripe_id",
    "type",
    "livemode",
    "api_version",
    "payload",
    "received_at",
    "status",
    "attempts",
    "last_error",
)
#: The insert's SQL, by database vendor (it only depends on the model and the quoting).
_insert_sql: dict[str, str] = {}


def _event_insert(
    connection: Any, values: dict[str, Any], text: str | None = None
) -> Callable[[], int | None]:
    """A prepared insert of an event unless its Stripe id is stored already; calling it returns
    the new row's pk, or None. ``text``: the payload's JSON, stored as it is.

    One ``INSERT … ON CONFLICT (stripe_id) DO NOTHING RETURNING id`` (PostgreSQL, SQLite): no
    savepoint, no IntegrityError to recover from, no second query for a duplicate. A delivery
    racing this one waits for this transaction and then inserts nothing (PostgreSQL), or
    waits for the write lock first (SQLite). A conflict on anything but the Stripe id raises.
    """
    if not connection.features.can_return_columns_from_insert or connection.vendor not in (
        "postgresql",
        "sqlite",
    ):
        return lambda: _insert_event_portably(values)
    sql = _insert_sql.get(connection.vendor) or _build_insert_sql(connection)
    meta = StripeEvent._meta
    params = [
        # A JSON column takes JSON text as it is (jsonb parses it; SQLite keeps the text): the
        # parsed body need not be serialised again.
        text
        if name == "payload" and text is not None
        else meta.get_field(name).get_db_prep_save(values[name], connection)  # type: ignore[union-attr]
        for name in _INSERTED
    ]

    def insert() -> int | None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return row[0] if row else None

    return insert


def _build_insert_sql(connection: Any) -> str:
    meta = StripeEvent._meta
    quote = connection.ops.quote_name
    columns = [meta.get_field(name).column for name in _INSERTED]  # type: ignore[union-attr]
    sql = _insert_sql[connection.vendor] = (
        f"INSERT INTO {quote(meta.db_table)} "  # noqa: S608  (names from _meta)
        f"({', '.join(quote(column) for column in columns)}) "
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({quote(meta.get_field('stripe_id').column)}) DO NOTHING "  # type: ignore[union-attr]
        f"RETURNING {quote(meta.pk.column)}"  # type: ignore[union-attr]
    )
    return sql


def _insert_event_portably(values: dict[str, Any]) -> int | None:
    """The same for databases without ``ON CONFLICT … RETURNING``: a savepoint and a lookup."""
    try:
        with transaction.atomic(using=router.db_for_write(StripeEvent)):
            return int(StripeEvent.objects.create(**values).pk)
    except IntegrityError:
        if not StripeEvent.objects.filter(stripe_id=values["stripe_id"]).exists():
            raise  # not a redelivery: answering "duplicate" would lose the event
        return None


def enqueue(event_pk: int, *, token: str | None = None) -> None:
    """Hand a committed event to django-q2 (after its transaction, or from the sweep).

    ``token``: the lease the sweep wrote (see :func:`claim`).
    """
    try:
        _queue_task(event_pk, token)
    except Exception:
        # The event is stored as `received`; the sweep re-enqueues it. Stripe must still get its
        # 200, or it would redeliver an event we already hold.
        logger.exception("Could not enqueue Stripe event %s", event_pk)


def _queue_task(event_ref: int | str, token: str | None = None) -> None:
    from django_q.tasks import async_task

    args: tuple[Any, ...] = (event_ref, token) if token else (event_ref,)
    async_task(TASK, *args, group=TASK_GROUP, broker=retry.broker())


def _enqueues_in_same_transaction() -> bool:
    """True when django-q2's queue is a table in the database the inbox writes to.

    Then the task row is inserted in the event's own transaction: both commit together (one
    commit instead of two, and no window where an event is stored but not queued), and no
    worker can see the task before the event. Other brokers (Redis, SQS…) and sync mode
    enqueue on commit instead.
    """
    from django_q.conf import Conf

    return bool(Conf.ORM) and not Conf.SYNC and router.db_for_write(StripeEvent) == Conf.ORM


# Processing ----------------------------------------------------------------------------------


def lease() -> timedelta:
    """How long a claimed event is left alone: longer than a task may run (Q_CLUSTER timeout)."""
    return retry.lease()


def backoff(attempts: int) -> timedelta:
    """The wait before the next try after ``attempts`` failed ones: doubled each time, capped,
    plus up to 10% jitter so events that failed together (a Stripe outage) spread out."""
    return retry.backoff(
        attempts,
        first=app_settings.event_retry_delay,
        longest=app_settings.event_retry_max_delay,
    )


def claim(event: int | str, token: str | None = None) -> StripeEvent | None:
    """Take an event for processing, or None when it is not ours to run now.

    A conditional UPDATE (race-safe on every database): the event must still be waiting
    (``received`` or ``failed``) and either unleased, past its lease, leased to us (the sweep
    passes the lease it wrote as ``token``), or never attempted. The claim counts an attempt and
    leases the event to this task. ``event``: its pk, or (queued by the webhook) Stripe's event
    id.

    Never attempted: no worker holds it, so a lease on it can only be the sweep's, written
    because the task waited in a long queue (a launch-day burst) past ``STUCK_AFTER``. Its own
    task, arriving at last, takes it rather than sending it to the back of the queue behind the
    sweep's copy.
    """
    now = timezone.now()
    free = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now) | Q(attempts=0)
    if token:
        with contextlib.suppress(ValueError):
            free |= Q(next_attempt_at=datetime.fromisoformat(token))
    claimed = (
        StripeEvent.objects.filter(_lookup(event))
        .filter(status__in=(StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED))
        .filter(free)
        .update(attempts=F("attempts") + 1, next_attempt_at=now + lease())
    )
    return StripeEvent.objects.filter(_lookup(event)).first() if claimed else None


def _lookup(event: int | str) -> Q:
    return Q(stripe_id=event) if isinstance(event, str) else Q(pk=event)


def process(event_ref: int | str, token: str | None = None) -> str:
    """Act on a stored event; returns the outcome (also recorded on the event).

    On an error the event is marked ``failed``: a transient one (Stripe unavailable, a bug) gets
    a ``next_attempt_at`` with backoff until ``MAX_EVENT_ATTEMPTS``; a permanent one (Stripe
    refused the request: an unknown session) none. The exception is re-raised so django-q2
    records a failed task; the event stays replayable (``manage.py reprocess``).
    """
    event = claim(event_ref, token)
    if event is None:
        current = (
            StripeEvent.objects.filter(_lookup(event_ref)).values_list("status", flat=True).first()
        )
        if current is None:
            logger.warning("Stripe event %s no longer exists", event_ref)
            return "missing"
        # Done already, or another task holds it, or it waits for its next attempt.
        return f"skipped ({current})"

    # A purchase this event pays gets its delivery email from this task, right after the
    # payment commits, not from one more task queued behind the rest of a burst.
    with outbox.sending_deliveries_here() as paid:
        try:
            result = route(event)
        except Exception as exc:
            record_failure(event, exc)
            raise
    if isinstance(result, str):
        record(event.pk, StripeEvent.Status.IGNORED, result)
        return "ignored"
    status = _EVENT_STATUS.get(result.outcome, StripeEvent.Status.PROCESSED)
    record(event.pk, status, result.reason if result.outcome != "fulfilled" else "", result)
    outbox.send_deliveries(paid, paid)
    return result.outcome


def route(event: StripeEvent) -> FulfillmentResult | str:
    """Call the rule for the event's type; a string says why there was nothing to do."""
    obj = _data_object(event.payload)
    if event.type in SESSION_EVENT_TYPES:
        session_id = obj.get("id")
        if not stripe_api.looks_like_id(session_id, "cs_"):
            return "no Checkout Session id in payload"
        return fulfillment.fulfill_checkout(session_id)
    if event.type in PAYMENT_INTENT_EVENT_TYPES:
        pi_id = obj.get("id") if event.type.startswith("payment_intent.") else None
        pi_id = pi_id or payment_intent_id(obj)
        if not stripe_api.looks_like_id(pi_id, "pi_"):
            return "no PaymentIntent in payload"
        return fulfillment.sync_payment_intent(pi_id)
    if event.type in INVOICE_EVENT_TYPES:
        reference = metadata.as_dict(obj.get("metadata")).get(metadata.PURCHASE)
        return fulfillment.sync_purchase_reference(reference)
    return f"unhandled event type {event.type!r}"


def record(event_pk: int, status: str, note: str, result: Any = None) -> None:
    """Record an event's outcome: its status, why (``note``) and the purchase it concerned."""
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


def record_failure(event: StripeEvent, exc: Exception) -> None:
    """Mark a claimed event failed, with a next attempt unless it failed for good."""
    # (No NUL: PostgreSQL refuses it in text, and this update must not fail in turn.)
    error = f"{type(exc).__name__}: {exc}"[:2000].replace("\x00", "\ufffd")
    attempts = event.attempts
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    # A rejected API key is the site's to fix (a rolled key): keep retrying with backoff, so the
    # events heal once the new key is set, instead of failing for good at the first attempt.
    permanent = isinstance(exc, stripe_api.StripePermanent) and not isinstance(
        exc, stripe_api.StripeKeyRejected
    )
    if permanent or attempts >= max_attempts:
        next_attempt = None
        why = "permanent error" if permanent else f"gave up after {attempts} attempts"
        error = f"{error} ({why}; run `manage.py reprocess {event.stripe_id}` once fixed)"
        logger.error(
            "Stripe event %s (%s) FAILED for good, %s: %s", event.stripe_id, event.type, why, exc
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


def reset(event_pk: int, *, reset_attempts: bool = False) -> None:
    """Make a stored event runnable again now (``manage.py reprocess``)."""
    changes: dict[str, Any] = {"status": StripeEvent.Status.RECEIVED, "next_attempt_at": None}
    if reset_attempts:
        changes["attempts"] = 0
    StripeEvent.objects.filter(pk=event_pk).update(**changes)


def payment_intent_id(obj: dict[str, Any]) -> Any:
    """The ``payment_intent`` a charge or dispute names: an id, or an expanded object's id."""
    value = obj.get("payment_intent")
    return value.get("id") if isinstance(value, dict) else value


def _data_object(payload: Any) -> dict[str, Any]:
    try:
        obj = payload["data"]["object"]
    except (KeyError, TypeError):
        return {}
    return obj if isinstance(obj, dict) else {}


# The sweep -----------------------------------------------------------------------------------


def due_events(now: datetime | None = None) -> QuerySet[StripeEvent]:
    """Events the sweep should (re)start: failed ones whose next attempt is due (and that have
    attempts left), and received ones older than ``STUCK_AFTER`` whose lease (if any) ran out."""
    now = now or timezone.now()
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    lease_over = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    retry_due = Q(status=StripeEvent.Status.FAILED, next_attempt_at__lte=now)
    lost = Q(status=StripeEvent.Status.RECEIVED, received_at__lte=now - STUCK_AFTER) & lease_over
    return StripeEvent.objects.filter(retry_due | lost).filter(attempts__lt=max_attempts)


def give_up_unfinished(now: datetime | None = None) -> int:
    """Mark failed for good the events whose last allowed attempt never finished.

    An attempt counts when it is claimed; a worker killed in it (django-q2's timeout, a crash,
    a deploy) records nothing, and the sweep retries once the claim's lease runs out. When that
    was the last attempt, the event would otherwise stay ``received`` or ``failed`` with a lease
    in the past: never retried, never reported, and never fed again by reconciliation (it holds
    the id). Returns how many were marked.
    """
    now = now or timezone.now()
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    unfinished = StripeEvent.objects.filter(
        status__in=(StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED),
        attempts__gte=max_attempts,
        next_attempt_at__lte=now,
    ).values_list("pk", "stripe_id", "type", "next_attempt_at")
    marked = 0
    for pk, stripe_id, event_type, lease_end in unfinished[:SWEEP_BATCH]:
        error = (
            f"the last of {max_attempts} attempts never finished (its worker was killed or "
            f"timed out); run `manage.py reprocess {stripe_id}` once fixed"
        )
        # Conditional: a task that finished meanwhile (or a reprocess) changed the row.
        if StripeEvent.objects.filter(pk=pk, next_attempt_at=lease_end).update(
            status=StripeEvent.Status.FAILED, last_error=error, next_attempt_at=None
        ):
            marked += 1
            logger.error("Stripe event %s (%s) FAILED for good: %s", stripe_id, event_type, error)
    return marked


def sweep() -> str:
    """Enqueue Stripe events that are due for another attempt or whose task was lost.

    Each event is first leased with a conditional UPDATE, so two sweeps at once enqueue it once;
    the task is handed the lease as its token. Events whose last attempt never finished are
    marked failed for good (:func:`give_up_unfinished`). Returns a short summary for the task
    log.
    """
    now = timezone.now()
    give_up_unfinished(now)
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
