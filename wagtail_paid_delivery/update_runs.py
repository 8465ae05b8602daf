"""The runs of update notices: who is next, one batch at a time, and resuming after a restart.

A notice (``updates``) is sent in batches of ``UPDATE_EMAILS_PER_MINUTE``, a batch a minute.
Each batch, under the notice's row lock, picks buyers who have no ``UpdateRecipient`` for the
notice yet and records one per buyer with the outbox's promise of their email, in one
transaction, then sets when the next batch may run. So the run's progress is in the database:
the schedule (:func:`continue_runs`, every minute) runs whatever batch is due after a restart,
and the outbox's sweep sends promised emails whose task was lost. A buyer recorded for a notice
is never picked again, and the outbox sends each promise once: nobody is emailed twice.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import outbox, updates
from .addresses import address_digest
from .conf import app_settings
from .models import Purchase, UpdateNotice, UpdateOptOut

logger = logging.getLogger(__name__)

#: One batch a minute; a batch the schedule runs a little early (its minute ticks drift) is
#: let through this long before its time.
BATCH_INTERVAL = timedelta(minutes=1)
EARLY_SLACK = timedelta(seconds=10)
#: A notice whose first batch task was lost (never ran this long after it was made) is started
#: by the schedule.
STUCK_AFTER = timedelta(minutes=2)


def buyers(product_id: int) -> Any:
    """The product's purchases whose buyers are told, newest first (an address's newest
    purchase is the one its email is about)."""
    return (
        Purchase.objects.filter(product_id=product_id, status__in=updates.TOLD_STATUSES)
        .exclude(email="")
        .order_by("-paid_at", "-pk")
    )


def next_buyers(notice: UpdateNotice, count: int) -> list[tuple[Purchase, str]]:
    """Up to ``count`` (purchase, address digest) pairs not yet told about ``notice``."""
    told = set(notice.recipients.values_list("address_digest", flat=True))
    opted_out = set(UpdateOptOut.objects.values_list("address_digest", flat=True))
    chosen: list[tuple[Purchase, str]] = []
    # A purchase told already is skipped by its id too: its address may have been corrected
    # since (a new digest), and picking it again would stall the run on its unique row.
    untold = buyers(notice.product_id).exclude(pk__in=notice.recipients.values("purchase_id"))
    for purchase in untold.iterator():
        digest = address_digest(purchase.email)
        if digest in told or digest in opted_out:
            continue
        told.add(digest)
        chosen.append((purchase, digest))
        if len(chosen) == count:
            break
    return chosen


def send_batch(notice_pk: int) -> str:
    """Promise the next batch of a notice's emails, if it is due; returns a summary.

    Under the notice's row lock, so two runs at once queue one batch; the unique constraints
    keep a buyer to one email even where the lock is not taken (SQLite)."""
    now = timezone.now()
    with transaction.atomic():
        notice = UpdateNotice.objects.select_for_update().filter(pk=notice_pk).first()
        if notice is None:
            return "missing"
        if notice.queued_at is not None:
            return "all queued"
        if notice.next_batch_at is not None and notice.next_batch_at > now + EARLY_SLACK:
            return "waiting"
        size = app_settings.update_emails_per_minute
        promised = 0
        chosen = next_buyers(notice, size)
        for purchase, digest in chosen:
            if outbox.promise_update(notice, purchase, digest) is not None:
                promised += 1
        due = notice.next_batch_at or now
        following = due + BATCH_INTERVAL
        notice.next_batch_at = following if following > now else now + BATCH_INTERVAL
        notice.batches += 1
        if len(chosen) < size:  # no buyer left after this batch
            notice.queued_at = now
            notice.next_batch_at = None
        notice.save(update_fields=["next_batch_at", "batches", "queued_at"])
    logger.info("Update notice %s: batch %s queued %s emails", notice_pk, notice.batches, promised)
    return f"queued {promised}" + ("; all queued" if notice.queued_at else "")


def due_notices(now: Any = None) -> Any:
    """Notices with buyers left to queue whose next batch is due, or whose first was lost."""
    now = now or timezone.now()
    unfinished = UpdateNotice.objects.filter(queued_at=None)
    due = unfinished.filter(next_batch_at__lte=now + EARLY_SLACK)
    lost = unfinished.filter(next_batch_at=None, created_at__lte=now - STUCK_AFTER)
    return (due | lost).order_by("created_at")


def continue_runs() -> str:
    """Every minute: queue the next batch of every notice that is due (also after a restart)."""
    results = [f"#{pk}: {send_batch(pk)}" for pk in due_notices().values_list("pk", flat=True)]
    return "; ".join(results) or "nothing due"
