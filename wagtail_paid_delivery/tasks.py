"""django-q2 task functions: ids in, domain calls out.

Queued tasks and schedules store these dotted paths, so a task keeps its name and module.
The broker delivers at least once: each rule called here is idempotent.
"""

from __future__ import annotations

from typing import Any

from django.core.management import call_command

from . import heartbeat, inbox, outbox, reconciliation, retention, selftest, update_runs


def process_stripe_event(event: int | str, token: str | None = None) -> str:
    """Act on a stored Stripe event (``inbox.process``): its pk, or Stripe's event id."""
    return inbox.process(event, token)


def sweep() -> str:
    """Every minute: record the cluster's heartbeat, and enqueue events due for another attempt
    or whose task was lost."""
    heartbeat.beat()
    return inbox.sweep()


def reconcile() -> str:
    """Every ten minutes: store the Stripe events the webhook missed (refunds, disputes, paid
    sessions) and ask Stripe about the pending purchases that are due."""
    return reconciliation.reconcile().summary()


def cleanup() -> str:
    """Daily: remove records past their ``RETENTION`` period, within a time budget (the next
    run carries on)."""
    return retention.cleanup(time_budget=retention.task_time_budget()).summary()


def sweep_emails() -> str:
    """Every minute: enqueue emails due for another attempt or whose task was lost."""
    return outbox.sweep()


def send_email(email_pk: int, token: str | None = None) -> str:
    """One attempt at a promised email (``outbox.attempt``); a failure is recorded, not raised."""
    return outbox.attempt(email_pk, token)


def send_delivery_email(purchase_pk: int) -> str:
    """The delivery email of a paid purchase: promised once, sent at least once (the sweep
    retries a failed send)."""
    return outbox.deliver_purchase(purchase_pk)


def resend_links(email: str, product_id: int | None = None, request_id: str = "") -> str:
    """Email fresh links to ``email`` if it has paid purchases. The resend view enqueues this for
    every address it accepts, so whether the address bought is decided here, out of the
    request: the page's answer and timing say nothing about it."""
    return outbox.resend_links(email, product_id, request_id)


def send_library_sign_in(email: str, request_id: str = "") -> str:
    """Email a one-time library sign-in link to ``email`` if it ever bought. The library view
    enqueues this for every address it accepts, so whether the address bought is decided
    here, out of the request."""
    return outbox.send_library_sign_in(email, request_id)


def delivery_selftest(with_stripe: bool = False) -> list[dict[str, Any]]:
    """Run every self-test check, the HTTP probes included (queued by the admin's self-test
    page, so the probes never run inside the web request that would wait on them)."""
    return selftest.as_dicts(selftest.run(None, with_stripe=with_stripe))


def send_update_batch(notice_pk: int) -> str:
    """Queue the next batch of an update notice's emails, if it is due."""
    return update_runs.send_batch(notice_pk)


def update_notices() -> str:
    """Every minute: queue the batches of update notices that are due (a run resumes here after
    a restart)."""
    return update_runs.continue_runs()


def publish_scheduled() -> str:
    """Every minute when ``SCHEDULE_PUBLISHING`` is on: Wagtail's ``publish_scheduled``, so
    pages (and the update emails they ask for) go live on time without cron."""
    call_command("publish_scheduled")
    return "published what was due"
