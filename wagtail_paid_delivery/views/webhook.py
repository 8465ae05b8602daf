"""The Stripe webhook inbox: verify, store, enqueue, answer 200.

The view never calls Stripe and never fulfils anything itself: it checks the signature, stores
the event (``StripeEvent``, unique on Stripe's event id) and, for events this installation
handles, enqueues ``tasks.process_stripe_event`` once the row is committed. Stripe retries any
delivery that does not get a 2xx quickly, so the work that can be slow (fetching the session,
locking the purchase, sending email) happens in the task, and a failed task is retried by us
from the stored row, not by Stripe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import IntegrityError, router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import stripe_api, tasks
from ..conf import app_settings
from ..models import StripeEvent

logger = logging.getLogger(__name__)

#: Event types that lead to work (see ``tasks.route``); every other verified event is stored as
#: ``ignored``.
HANDLED_EVENT_TYPES = tasks.HANDLED_EVENT_TYPES

TASK = tasks.TASK

#: Objects that carry our metadata (written by checkout on the session, its PaymentIntent and,
#: with invoice creation on, its invoice): checked here, for free.
_METADATA_OBJECTS = ("checkout.session.", "payment_intent.", "invoice.")


def ignore_reason(event: dict[str, Any]) -> str:
    """Why a verified event is not ours to act on; empty when it is. Reads the payload only.

    Sessions, PaymentIntents and invoices carry our metadata, so another integration's are
    told apart here. Charges and disputes may not (a charge copies its PaymentIntent's metadata
    when it is created; a dispute has none): they need a PaymentIntent, and the task maps it
    to one of our purchases (or finds it is not ours) by asking our database and then Stripe.
    """
    event_type = event.get("type")
    if event_type not in HANDLED_EVENT_TYPES:
        return f"unhandled event type {event_type!r}"
    if bool(event.get("livemode")) != stripe_api.secret_key_is_live():
        # A test-mode event reaching a live site (or the reverse) is a misrouted endpoint.
        return "livemode does not match the configured secret key"
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return "no object in payload"
    metadata = obj.get("metadata")
    if not str(event_type).startswith(_METADATA_OBJECTS):
        if not obj.get("payment_intent"):
            return "no PaymentIntent (not a Checkout payment)"
        installation = metadata.get("wpd_installation") if isinstance(metadata, dict) else None
        if installation and installation != app_settings.installation_id:
            return "not this installation's payment"
        return ""
    if not isinstance(metadata, dict):
        return "no metadata"
    if metadata.get("wpd_installation") != app_settings.installation_id:
        # Another integration (or another site) on the same Stripe account.
        return "not this installation's checkout session"
    if not metadata.get("wpd_purchase"):
        return "no purchase id in metadata"
    return ""


@functools.cache
def _broker() -> Any:
    # django-q2 builds a broker (for Redis: a new connection) on every async_task without one;
    # one per process is enough (brokers are safe to share between threads).
    from django_q.brokers import get_broker

    return get_broker()


def enqueue(event_pk: int, *, savepoint: bool = False, token: str | None = None) -> None:
    """Hand a stored event to django-q2; the worker must be able to find the committed row.

    ``savepoint``: called inside the event's own transaction, where a failed enqueue must not
    take the stored event down with it. ``token``: the lease the sweep wrote (see
    ``tasks.claim``).
    """
    from django_q.tasks import async_task

    args: tuple[Any, ...] = (event_pk, token) if token else (event_pk,)
    try:
        with transaction.atomic() if savepoint else contextlib.nullcontext():
            async_task(TASK, *args, group=tasks.TASK_GROUP, broker=_broker())
    except Exception:
        # The event is stored as `received`; the sweep re-enqueues it. Stripe must still get its
        # 200, or it would redeliver an event we already hold.
        logger.exception("Could not enqueue Stripe event %s", event_pk)


def _enqueues_in_same_transaction() -> bool:
    """True when django-q2's queue is a table in the database the inbox writes to.

    Then the task row is inserted in the event's own transaction: both commit together (one
    commit instead of two, and no window where an event is stored but not queued), and no
    worker can see the task before the event. Other brokers (Redis, SQS…) and sync mode
    enqueue on commit instead.
    """
    from django_q.conf import Conf

    return bool(Conf.ORM) and not Conf.SYNC and router.db_for_write(StripeEvent) == Conf.ORM


# csrf_exempt: Stripe cannot send a CSRF token; the signature is the authentication.
# login_not_required: Stripe is never logged in (LoginRequiredMiddleware would redirect it).
# non_atomic_requests: with ATOMIC_REQUESTS the row would only commit after the view returns;
# our own short atomic block commits it and lets the task run on commit.
@csrf_exempt
@login_not_required
@require_POST
@transaction.non_atomic_requests
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event = stripe_api.verify_webhook(request.body, request.headers.get("Stripe-Signature"))
    except stripe_api.InvalidWebhook as exc:
        # Nothing is stored: an unverified body is not an event.
        logger.warning("Rejected Stripe webhook: %s", exc.reason)
        return HttpResponseBadRequest(exc.reason, content_type="text/plain")

    reason = ignore_reason(event)
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                stripe_id=event["id"],
                type=str(event.get("type") or "")[:100],
                livemode=bool(event.get("livemode")),
                api_version=str(event.get("api_version") or "")[:64],
                payload=event,
                status=StripeEvent.Status.IGNORED if reason else StripeEvent.Status.RECEIVED,
                # For an ignored event this field says why, for the admin's events list.
                last_error=reason,
            )
            if not reason:
                pk = stored.pk
                if _enqueues_in_same_transaction():
                    enqueue(pk, savepoint=True)
                else:
                    transaction.on_commit(lambda: enqueue(pk))
    except IntegrityError:
        # A redelivery, or two deliveries racing: the first row wins and was enqueued once.
        logger.info("Duplicate Stripe event %s", event["id"])
        return HttpResponse("duplicate", content_type="text/plain")

    if reason:
        logger.info("Ignored Stripe event %s (%s): %s", event["id"], event.get("type"), reason)
        return HttpResponse("ignored", content_type="text/plain")
    return HttpResponse("ok", content_type="text/plain")
