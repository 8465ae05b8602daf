"""django-q2 task functions: ids in, domain calls out.

Queued tasks and schedules store these dotted paths, so a task keeps its name and module.
The broker delivers at least once: each rule called here is idempotent.
"""

from __future__ import annotations

from . import delivery, inbox, reconciliation, retention


def process_stripe_event(event_pk: int, token: str | None = None) -> str:
    """Act on a stored Stripe event (``inbox.process``)."""
    return inbox.process(event_pk, token)


def sweep() -> str:
    """Every minute: enqueue events due for another attempt or whose task was lost."""
    return inbox.sweep()


def reconcile() -> str:
    """Every ten minutes: ask Stripe about recent pending purchases."""
    return reconciliation.reconcile_pending()


def cleanup() -> str:
    """Daily: remove records past their ``RETENTION`` period, within a time budget (the next
    run carries on)."""
    return retention.cleanup(time_budget=retention.task_time_budget()).summary()


def send_delivery_email(purchase_pk: int) -> str:
    """Issue a link and email it to the buyer, once per purchase. Raises on a mail failure so
    django-q2 records the failed task; retrying it is safe."""
    return delivery.deliver_purchase(purchase_pk)


def resend_links(email: str, product_id: int | None = None) -> str:
    """Email fresh links to ``email`` if it has paid purchases. The resend view enqueues this for
    every address it accepts, so whether the address bought is decided here, out of the
    request: the page's answer and timing say nothing about it."""
    return delivery.resend_links(email, product_id)
