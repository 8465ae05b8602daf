"""What is kept, and for how long: the rules ``manage.py cleanup`` and its daily task apply.

Periods come from ``RETENTION`` (``conf.app_settings.retention``); the README's "Data we store"
lists every model's personal fields against them. Removed, each past its period:

- download events (``download_records``, counted from the request), except a disputed
  purchase's;
- download links that expired that long ago (their per-file counters and events go with them),
  except a disputed purchase's;
- Stripe events that were processed or ignored (``stripe_events``, from when they arrived);
  failed and unprocessed ones are work still to do and are never removed;
- purchases never paid that Stripe reported expired or failed (``unpaid_purchases``, from their
  creation, and never before a Checkout Session's lifetime is over, so nothing Stripe may still
  pay is removed). A failed purchase that has a PaymentIntent is kept: a payment may have been
  taken (a refused delivery whose line items did not match), and the shop may owe a refund;
- emails the outbox recorded (``emails``, from when they were recorded), sent, failed or not
  sent; one still waiting to be sent is work to do and is never removed;
- the library's sign-in links once used or expired (no period: they open nothing any more).

Paid, refunded, revoked and disputed purchases are the shop's sales records: never removed here.

Each kind is removed in batches of ``BATCH_SIZE`` rows, a transaction each, so no big table is
locked for long and an interrupted run keeps what it did (the next one carries on). Every batch
re-applies its conditions in the DELETE, so a row that changed meanwhile (an event replayed, a
purchase paid) is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from .conf import app_settings
from .models import (
    DownloadEvent,
    DownloadLink,
    LibrarySignIn,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

#: Rows removed per transaction.
BATCH_SIZE = 500
#: A Checkout Session lives at most 24 hours; an unpaid purchase is never removed younger than
#: this, whatever its status says.
SESSION_LIFETIME = timedelta(hours=25)
#: The share of django-q2's task ``timeout`` a scheduled run may use before it stops (the
#: next day's run carries on), so the cluster never kills it half-way through a batch.
TASK_TIME_SHARE = 0.5

#: The kinds removed, in the order they are removed (events before the links they belong to).
KINDS = (
    "download_events",
    "download_links",
    "stripe_events",
    "unpaid_purchases",
    "emails",
    "library_sign_ins",
)
#: How each kind reads in a summary.
LABELS = {
    "download_events": "download events",
    "download_links": "download links",
    "stripe_events": "Stripe events",
    "unpaid_purchases": "unpaid purchases",
    "emails": "emails",
    "library_sign_ins": "library sign-in links",
}


@dataclass
class CleanupResult:
    """What a run removed (or, dry, would remove), per kind."""

    dry_run: bool
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: True when a time budget ran out before everything due was removed.
    stopped_early: bool = False

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        parts = ", ".join(f"{self.removed[kind]} {LABELS[kind]}" for kind in KINDS)
        tail = " (stopped early: time budget used; the next run carries on)"
        return f"{verb} {parts}{tail if self.stopped_early else ''}"


# What is due -----------------------------------------------------------------------------------


def _cutoff(now: datetime, key: str) -> datetime | None:
    period = app_settings.retention[key]
    return None if period is None else now - period


def due_download_events(now: datetime) -> models.QuerySet[DownloadEvent] | None:
    cutoff = _cutoff(now, "download_records")
    if cutoff is None:
        return None
    return DownloadEvent.objects.filter(created_at__lt=cutoff).exclude(
        link__purchase__status=Purchase.Status.DISPUTED
    )


def due_download_links(now: datetime) -> models.QuerySet[DownloadLink] | None:
    cutoff = _cutoff(now, "download_records")
    if cutoff is None:
        return None
    return DownloadLink.objects.filter(expires_at__lt=cutoff).exclude(
        purchase__status=Purchase.Status.DISPUTED
    )


def due_stripe_events(now: datetime) -> models.QuerySet[StripeEvent] | None:
    cutoff = _cutoff(now, "stripe_events")
    if cutoff is None:
        return None
    return StripeEvent.objects.filter(
        received_at__lt=cutoff,
        status__in=(StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED),
    )


def due_unpaid_purchases(now: datetime) -> models.QuerySet[Purchase] | None:
    cutoff = _cutoff(now, "unpaid_purchases")
    if cutoff is None:
        return None
    cutoff = min(cutoff, now - SESSION_LIFETIME)
    never_paid = models.Q(paid_at__isnull=True, amount_refunded=0, created_at__lt=cutoff)
    expired = models.Q(status=Purchase.Status.EXPIRED)
    # A failed purchase with a PaymentIntent may have taken money (see the module docstring).
    failed = models.Q(status=Purchase.Status.FAILED, stripe_payment_intent_id="")
    return Purchase.objects.filter(never_paid & (expired | failed))


def due_emails(now: datetime) -> models.QuerySet[OutboundEmail] | None:
    cutoff = _cutoff(now, "emails")
    if cutoff is None:
        return None
    return OutboundEmail.objects.filter(created_at__lt=cutoff).exclude(
        status=OutboundEmail.Status.PENDING
    )


def due_library_sign_ins(now: datetime) -> models.QuerySet[LibrarySignIn]:
    # Used or expired, a sign-in link opens nothing; its hash and address are kept no longer.
    return LibrarySignIn.objects.filter(
        models.Q(expires_at__lte=now) | models.Q(used_at__isnull=False)
    )


#: Each kind's "what is due now".
DUE: dict[str, Callable[[datetime], models.QuerySet[Any] | None]] = {
    "download_events": due_download_events,
    "download_links": due_download_links,
    "stripe_events": due_stripe_events,
    "unpaid_purchases": due_unpaid_purchases,
    "emails": due_emails,
    "library_sign_ins": due_library_sign_ins,
}


# Removing ----------------------------------------------------------------------------------------


def _batches(due: models.QuerySet[Any], batch_size: int) -> Iterator[list[int]]:
    """Primary keys of ``due``, a batch at a time, in key order (each query starts after the
    last key seen, so a row that could not be removed is not read again)."""
    last = 0
    while True:
        pks = list(due.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not pks:
            return
        yield pks
        last = pks[-1]


def _remove_batch(kind: str, due: models.QuerySet[Any], pks: list[int]) -> dict[str, int]:
    """Delete the rows of ``pks`` that are still due; how many of each kind went."""
    removed = {}
    with transaction.atomic():
        rows = due.filter(pk__in=pks)
        if kind == "download_links":
            # Their events first, counted as events, so a link's long history (refusals after
            # it expired) is not one huge cascade.
            events = DownloadEvent.objects.filter(link_id__in=rows.values("pk"))
            removed["download_events"] = events.delete()[0]
        if kind == "unpaid_purchases":
            # Skip a purchase whose row a fulfillment holds right now (PostgreSQL); re-read
            # under the lock, so one paid meanwhile is no longer due.
            locked = list(rows.select_for_update(skip_locked=True).values_list("pk", flat=True))
            rows = due.filter(pk__in=locked)
        removed[kind] = rows.delete()[1].get(due.model._meta.label, 0)
    return removed


def _dry_count(kind: str, due: models.QuerySet[Any], now: datetime) -> int:
    if kind == "download_events":
        # The events that go with due links count as events too, as in a real run.
        links = due_download_links(now)
        if links is not None:
            due = DownloadEvent.objects.filter(
                models.Q(pk__in=due.values("pk")) | models.Q(link__in=links.values("pk"))
            )
    return due.count()


def cleanup(
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    time_budget: float | None = None,
    now: datetime | None = None,
) -> CleanupResult:
    """Remove (``dry_run``: count) every record past its retention period.

    ``time_budget``: seconds after which no new batch is started (``stopped_early``).
    """
    now = now or timezone.now()
    deadline = time.monotonic() + time_budget if time_budget is not None else None
    result = CleanupResult(dry_run=dry_run)
    for kind in KINDS:
        due = DUE[kind](now)
        if due is None:
            continue
        if dry_run:
            result.removed[kind] = _dry_count(kind, due, now)
            continue
        for pks in _batches(due, batch_size):
            if deadline is not None and time.monotonic() > deadline:
                result.stopped_early = True
                return result
            for removed_kind, count in _remove_batch(kind, due, pks).items():
                result.removed[removed_kind] += count
    return result


def task_time_budget() -> float:
    """Seconds a scheduled run may take: a share of django-q2's task timeout."""
    timeout = (getattr(settings, "Q_CLUSTER", None) or {}).get("timeout") or 60
    return float(timeout) * TASK_TIME_SHARE
