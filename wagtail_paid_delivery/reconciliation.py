"""Reconciliation: heal what missed webhooks left behind, from Stripe's own records.

A shop whose webhook endpoint was wrong, disabled or down heals itself. Each run
(``tasks.reconcile`` every ten minutes, or ``manage.py reconcile``) makes two passes:

**Events.** Stripe keeps 30 days of events and lists them (``GET /v1/events``). We list the
types we act on (``EVENT_TYPES``: refunds, disputes, the ends of Checkout Sessions) created since
a high-water mark (``ReconcileMark``, one per Stripe mode) and feed the ones the inbox lacks
(an unknown event id) to ``inbox.store``, exactly as if the webhook had delivered them: the same
``ignore_reason``, the same processing, retries and state machine. This is what finds a refund or
a dispute on a *paid* purchase: polling every paid purchase would not scale, and their number
only grows. The window is listed oldest slice first (``EVENT_SLICE``); the mark moves to the end
of each slice once all its pages are stored, so a run that stops (Stripe unavailable, the page
budget spent) resumes where it stopped and never skips an event. Each run starts
``EVENT_OVERLAP`` before the mark (Stripe's list may show an event a moment after its
``created`` second) and ends ``EVENT_GRACE`` before now (a webhook in flight is left to arrive);
events listed twice are recognised by their id.

**Pending purchases.** A pending purchase younger than a session's lifetime (plus a margin) is
passed through ``fulfill_checkout`` (paid → fulfilled; expired → expired; failed → failed). The
batch is fair: each purchase is asked about a bounded number of times (``MAX_CHECKS``) with
growing spacing (``RECONCILE_MIN_AGE`` doubled after every check, capped at
``MAX_CHECK_SPACING``, with one check just after its session must have expired), and the due ones
with the fewest checks go first, newest first among equals. So a flood of abandoned checkouts
can fill a batch but never push a fresh purchase (the one most likely to be paid) back more than
the flood that arrived after it; and a paid session whose webhook was lost is found by the
events pass anyway, whatever the polling's backlog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import fulfillment, inbox, stripe_api
from .conf import app_settings
from .models import Purchase, ReconcileMark, StripeEvent

logger = logging.getLogger(__name__)

# Events --------------------------------------------------------------------------------------

#: The event types listed: refunds and disputes (nothing else finds them on a paid purchase)
#: and the ends of Checkout Sessions (a paid session, or a bank debit that cleared days later,
#: whose webhook was lost). ``payment_intent.succeeded`` and ``invoice.payment_succeeded`` say
#: nothing that ``checkout.session.completed`` does not. Stripe accepts up to 20.
EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(
        inbox.SESSION_EVENT_TYPES
        | (inbox.PAYMENT_INTENT_EVENT_TYPES - {"payment_intent.succeeded"})
    )
)
#: How long Stripe keeps events: the furthest back a listing can reach.
EVENT_RETENTION = timedelta(days=30)
#: Where the first run (no mark yet) starts. ``manage.py reconcile --since 30d`` reaches further.
FIRST_LOOKBACK = timedelta(days=1)
#: Each run lists again from this long before the mark.
EVENT_OVERLAP = timedelta(minutes=5)
#: Events younger than this are left to their webhook, which is normally on its way.
EVENT_GRACE = timedelta(minutes=2)
#: The window is listed in slices of this length, oldest first; the mark moves after each.
EVENT_SLICE = timedelta(days=1)
#: Pages (of up to 100 events) a scheduled run lists before it leaves the rest to the next run;
#: checked between slices, so a slice is always listed whole. The command has no budget.
EVENT_PAGES_PER_RUN = 20

# Pending purchases -----------------------------------------------------------------------------

#: Pending purchases checked per run (each costs one or two Stripe calls).
RECONCILE_BATCH = 50
#: How far back reconciliation looks: a Checkout Session lives 24 hours, plus a margin so a
#: session that just expired is seen expired once.
RECONCILE_WINDOW = timedelta(hours=25)
#: Purchases younger than this are left to the buyer's browser and the webhook; it is also the
#: first spacing between checks, doubled after each.
RECONCILE_MIN_AGE = timedelta(minutes=2)
#: The longest spacing between two checks of one purchase.
MAX_CHECK_SPACING = timedelta(hours=4)
#: A Checkout Session's longest life; a pending purchase is checked once just after it.
SESSION_LIFETIME = timedelta(hours=24)
EXPIRY_MARGIN = timedelta(minutes=5)
#: No pending purchase is asked about more often than this (about 13 checks fit the window).
MAX_CHECKS = 16


@dataclass
class EventsReport:
    """What the events pass did."""

    #: The window asked for (``until`` is where the listing got to, None when nowhere).
    since: datetime | None = None
    until: datetime | None = None
    pages: int = 0
    listed: int = 0
    #: Already in the inbox (delivered by the webhook, or an earlier run).
    held: int = 0
    #: Stripe ids of the events stored and queued for processing.
    queued: list[str] = field(default_factory=list)
    #: Stored as ``ignored`` (``inbox.ignore_reason``: not ours).
    ignored: int = 0
    #: Left out: they could not be a webhook's body either (logged by ``stripe_api``).
    unstorable: int = 0
    #: The window was listed to its end.
    complete: bool = False
    #: The mark after the run, and whether this run moved it.
    mark: datetime | None = None
    mark_moved: bool = False
    #: The window was cut to Stripe's 30 days: events in the gap are gone.
    gap: bool = False
    #: Why the pass stopped early; ``unavailable``: Stripe could not be reached.
    error: str = ""
    unavailable: bool = False

    def summary(self) -> str:
        if self.error and not self.pages:
            return f"events: {self.error}"
        text = (
            f"events: {self.listed} listed on {self.pages} page(s), {len(self.queued)} queued, "
            f"{self.ignored} ignored, {self.held} already held"
        )
        if self.unstorable:
            text += f", {self.unstorable} unstorable"
        if self.error:
            text += f"; stopped: {self.error}"
        elif not self.complete:
            text += "; more next run"
        return text


@dataclass
class Report:
    """What a reconciliation run did: the events pass, then the pending purchases."""

    events: EventsReport
    #: Outcome → how many pending purchases had it; None when the pass did not run.
    pending: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        """Everything asked of Stripe was answered."""
        return not self.events.error and "stripe unavailable" not in (self.pending or {})

    def summary(self) -> str:
        return f"{self.events.summary()}; pending: {pending_summary(self.pending)}"


def pending_summary(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "not checked"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing pending"


def reconcile(since: datetime | None = None, *, manual: bool = False) -> Report:
    """One run: list the events the inbox lacks since the mark (or ``since``), then check the
    pending purchases that are due. Stripe unavailable: the run stops, nothing is skipped.

    ``manual`` (the command: someone is waiting for the answer): the whole window, however many
    pages, up to this second. Otherwise (the schedule) about ``EVENT_PAGES_PER_RUN`` pages, up to
    ``EVENT_GRACE`` ago. Without ``STRIPE_SECRET_KEY`` nothing is asked.
    """
    if not app_settings.STRIPE_SECRET_KEY:
        return Report(EventsReport(error="STRIPE_SECRET_KEY is not set"))
    if manual:
        events = heal_events(since, max_pages=None, grace=timedelta(0))
    else:
        events = heal_events(since, max_pages=EVENT_PAGES_PER_RUN, grace=EVENT_GRACE)
    if events.unavailable:
        return Report(events)
    return Report(events, check_pending())


def mark_name() -> str:
    """The mark's row: one per Stripe mode, since test and live keys list different events."""
    return "events:live" if stripe_api.secret_key_is_live() else "events:test"


def current_mark() -> datetime | None:
    """How far Stripe's events have been listed for the configured key's mode."""
    return (
        ReconcileMark.objects.filter(name=mark_name())
        .values_list("listed_until", flat=True)
        .first()
    )


def heal_events(
    since: datetime | None = None,
    *,
    max_pages: int | None,
    grace: timedelta,
    now: datetime | None = None,
) -> EventsReport:
    """List the events of ``EVENT_TYPES`` created since the mark (or ``since``, which callers
    keep within ``EVENT_RETENTION``) up to ``grace`` ago, and store the ones the inbox lacks.

    The mark moves only over slices listed whole, and only when the window starts at or before
    it (a ``since`` later than the mark leaves a gap the mark must not jump). Stops at the end
    of a slice once ``max_pages`` were listed (None: no budget), and at a Stripe error.
    """
    now = now or timezone.now()
    report = EventsReport()
    name = mark_name()
    mark = current_mark()
    if since is None:
        start = mark - EVENT_OVERLAP if mark else now - grace - FIRST_LOOKBACK
    else:
        start = since
    moves_mark = since is None or mark is None or since <= mark
    if start < now - EVENT_RETENTION:
        if since is None:  # (a caller's ``since`` is cut silently: it was checked already)
            report.gap = True
            logger.error(
                "Reconciliation last listed Stripe's events at %s, more than %s days ago: "
                "events before %s are gone from Stripe and were not checked.",
                mark,
                EVENT_RETENTION.days,
                now - EVENT_RETENTION,
            )
        start = now - EVENT_RETENTION
    lower, end = int(start.timestamp()), int((now - grace).timestamp())
    report.since = _from_unix(lower)
    while lower < end:
        if max_pages is not None and report.pages >= max_pages:
            break
        upper = min(lower + int(EVENT_SLICE.total_seconds()), end)
        try:
            _list_slice(lower, upper, report)
        except stripe_api.StripeUnavailable as exc:
            report.error, report.unavailable = f"Stripe is unavailable: {exc}", True
            logger.warning("Reconciliation stopped, %s", report.error)
            break
        except stripe_api.StripeRefused as exc:
            report.error = f"Stripe refused to list events: {exc}"
            logger.error(
                "Reconciliation: %s (a restricted key needs the 'Events: read' permission)",
                report.error,
            )
            break
        lower = upper
        report.until = _from_unix(upper)
        if moves_mark:
            report.mark_moved |= _advance_mark(name, report.until)
    report.complete = lower >= end and not report.error
    report.mark = current_mark()
    if report.queued:
        logger.warning(
            "Reconciliation found %s Stripe event(s) no webhook delivered (%s): check the "
            "webhook endpoint in the Stripe Dashboard and the events it sends.",
            len(report.queued),
            ", ".join(report.queued[:5]) + (", …" if len(report.queued) > 5 else ""),
        )
    return report


def _from_unix(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _list_slice(created_gt: int, created_lte: int, report: EventsReport) -> None:
    """Every page of the events created in (created_gt, created_lte], stored as they come."""
    after: str | None = None
    while True:
        page = stripe_api.list_events(
            types=EVENT_TYPES,
            created_gt=created_gt,
            created_lte=created_lte,
            starting_after=after,
        )
        report.pages += 1
        report.unstorable += page.unstorable
        _store_new(page.events, report)
        if not page.has_more or page.last_id is None:
            return
        if page.last_id == after:
            raise stripe_api.StripeRefused(f"Stripe's list of events repeats after {after}")
        after = page.last_id


def _store_new(events: list[dict[str, Any]], report: EventsReport) -> None:
    """Hand the events the inbox lacks to ``inbox.store``, as the webhook would have."""
    ids = [e.get("id") for e in events if isinstance(e.get("id"), str)]
    held = set(StripeEvent.objects.filter(stripe_id__in=ids).values_list("stripe_id", flat=True))
    for event in events:
        report.listed += 1
        event_id = event.get("id")
        if not isinstance(event_id, str) or not event_id or event_id in held:
            report.held += 1
            continue
        stored = inbox.store(event)
        if stored is inbox.Stored.QUEUED:
            report.queued.append(event_id)
        elif stored is inbox.Stored.IGNORED:
            report.ignored += 1
        else:  # the webhook got there in between
            report.held += 1


def _advance_mark(name: str, to: datetime) -> bool:
    """Move the mark forward to ``to`` (never back: a parallel run may be further)."""
    now = timezone.now()
    if ReconcileMark.objects.filter(name=name, listed_until__lt=to).update(
        listed_until=to, updated_at=now
    ):
        return True
    if ReconcileMark.objects.filter(name=name).exists():
        return False
    try:
        with transaction.atomic():
            ReconcileMark.objects.create(name=name, listed_until=to)
    except IntegrityError:  # a parallel run created it
        return _advance_mark(name, to)
    return True


# Pending purchases -----------------------------------------------------------------------------


def check_pending(*, limit: int | None = None, now: datetime | None = None) -> dict[str, int]:
    """Pass up to ``limit`` (``RECONCILE_BATCH``) due pending purchases through
    ``fulfill_checkout``, fewest checks first, newest first among equals.

    Returns outcome → count; ``{"stripe unavailable": 1}`` is added when Stripe went away (or
    rejected our key) and the pass stopped: the purchase being checked keeps its turn, and no
    check is spent on an outage.
    """
    now = now or timezone.now()
    due = Q(reconcile_after__isnull=True, created_at__lte=now - RECONCILE_MIN_AGE) | Q(
        reconcile_after__lte=now
    )
    pending = (
        Purchase.objects.filter(
            status=Purchase.Status.PENDING,
            source=Purchase.Source.CHECKOUT,
            created_at__gte=now - RECONCILE_WINDOW,
            reconcile_checks__lt=MAX_CHECKS,
        )
        .filter(due)
        .exclude(stripe_checkout_session_id=None)
        .exclude(stripe_checkout_session_id="")
        .order_by("reconcile_checks", "-created_at", "-pk")
        .values_list("pk", "stripe_checkout_session_id", "created_at", "reconcile_checks")
    )
    counts: dict[str, int] = {}
    for pk, session_id, created_at, checks in pending[: limit or RECONCILE_BATCH]:
        try:
            outcome = _reconcile_one(pk, str(session_id))
        except (stripe_api.StripeUnavailable, stripe_api.StripeKeyRejected) as exc:
            logger.warning("Reconciliation stopped, Stripe is unavailable: %s", exc)
            counts["stripe unavailable"] = 1
            break
        counts[outcome] = counts.get(outcome, 0) + 1
        Purchase.objects.filter(pk=pk).update(
            reconcile_checks=F("reconcile_checks") + 1,
            reconcile_after=next_check(created_at, checks + 1, now),
        )
    return counts


def next_check(created_at: datetime, checks: int, now: datetime) -> datetime:
    """When a pending purchase asked about ``checks`` times may be asked again: the spacing
    doubles from ``RECONCILE_MIN_AGE`` up to ``MAX_CHECK_SPACING``, and one check falls just
    after its session must have expired (so it is seen expired once)."""
    spacing = min(RECONCILE_MIN_AGE * 2 ** min(checks, 20), MAX_CHECK_SPACING)
    at = now + spacing
    expired_by = created_at + SESSION_LIFETIME + EXPIRY_MARGIN
    return expired_by if now < expired_by < at else at


def _reconcile_one(pk: int, session_id: str) -> str:
    try:
        result = fulfillment.fulfill_checkout(session_id)
    except stripe_api.StripeKeyRejected:
        raise  # our key, not this purchase: the pass stops
    except stripe_api.StripeRefused as exc:
        logger.error("Reconciliation: Stripe refused session %s: %s", session_id, exc)
        return "error"
    if result.outcome == "fulfilled":
        logger.warning(
            "Reconciliation fulfilled purchase %s (session %s) that no webhook had: "
            "check the Stripe webhook endpoint.",
            pk,
            session_id,
        )
    return result.outcome
