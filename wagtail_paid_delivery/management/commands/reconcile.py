"""``manage.py reconcile``: what the scheduled reconciliation does, now, with a report.

Lists the Stripe events the inbox lacks (refunds, disputes, the ends of Checkout Sessions) since
the high-water mark, or since ``--since``, stores them as the webhook would have, then asks Stripe
about the pending purchases that are due. See ``reconciliation``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import dateparse, timezone

from ... import inbox, reconciliation
from ...conf import SETTINGS_NAME, app_settings
from ...models import StripeEvent

_DURATION = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?", re.IGNORECASE)


def parse_since(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``1d6h``, ``90m``, ``2w`` (back from now), or a date or date-time
    (``2026-11-20``, ``2026-11-20T12:00``, in the site's time zone unless it says otherwise).
    Raises ValueError."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if text and match:
        weeks, days, hours, minutes = (int(g or 0) for g in match.groups())
        try:
            return now - timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    moment = dateparse.parse_datetime(text)
    if moment is None:
        day = dateparse.parse_date(text)
        if day is None:
            raise ValueError(f"{text!r} is neither a duration (30d, 12h, 90m) nor a date")
        moment = datetime(day.year, day.month, day.day)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


class Command(BaseCommand):
    help = (
        "Heal what missed webhooks left behind: list the Stripe events (refunds, disputes, "
        "Checkout Session ends) created since the last run, or since --since, store the ones "
        "this site lacks exactly as if the webhook had delivered them, then ask Stripe about "
        "pending purchases that are due. The same as the scheduled task. Exit status: 0 done, "
        "1 Stripe was unavailable or refused (run again later), 2 wrong usage or configuration."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            help=(
                "list events from this far back instead of from the last run: a duration "
                "(30d, 12h, 90m) or a date (2026-11-20); at most 30 days, Stripe's retention"
            ),
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="process the events stored by this run here and now instead of queueing them",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not app_settings.STRIPE_SECRET_KEY:
            raise CommandError(
                f"{SETTINGS_NAME}['STRIPE_SECRET_KEY'] is not set: there is no Stripe to ask.",
                returncode=2,
            )
        since = self.since(options["since"]) if options["since"] is not None else None
        report = reconciliation.reconcile(since, manual=True)
        self.write_events(report.events)
        self.stdout.write(f"Pending purchases: {reconciliation.pending_summary(report.pending)}")
        failed = self.process(report.events.queued) if options["sync"] else 0
        if not report.ok:
            raise CommandError(
                (report.events.error or "Stripe is unavailable")
                + ". Nothing was skipped: run again later.",
                returncode=1,
            )
        if failed:
            raise CommandError(f"{failed} event(s) failed; see the events list.", returncode=1)

    def since(self, text: str) -> datetime:
        now = timezone.now()
        try:
            since = parse_since(text, now)
        except ValueError as exc:
            raise CommandError(f"--since: {exc}.", returncode=2) from None
        if since > now:
            raise CommandError(f"--since {text} is in the future.", returncode=2)
        days = reconciliation.EVENT_RETENTION.days
        # A minute of slack, so that "--since 30d" itself is not refused by the clock moving.
        if since < now - reconciliation.EVENT_RETENTION - timedelta(minutes=1):
            raise CommandError(
                f"--since {text} reaches back {(now - since).days} days, but Stripe keeps events "
                f"for {days} days: use --since {days}d at most. Anything older is gone from "
                "Stripe's list; check those purchases in the Stripe Dashboard.",
                returncode=2,
            )
        return since

    def write_events(self, events: reconciliation.EventsReport) -> None:
        when = "from {} to {}".format(
            _iso(events.since), _iso(events.until) if events.until else "nowhere"
        )
        self.stdout.write(
            f"Stripe events {when}: {events.listed} listed on {events.pages} page(s); "
            f"{len(events.queued)} new and queued, {events.ignored} new and ignored (not ours), "
            f"{events.held} already held."
        )
        for event_id in events.queued:
            self.stdout.write(f"  stored {event_id}")
        if events.gap:
            self.stderr.write(
                f"Events older than {reconciliation.EVENT_RETENTION.days} days are gone from "
                "Stripe and were not checked."
            )
        moved = "moved" if events.mark_moved else "unchanged"
        self.stdout.write(f"High-water mark: {_iso(events.mark)} ({moved})")

    def process(self, stripe_ids: list[str]) -> int:
        """Run the events this run stored, here and now; returns how many failed."""
        failed = 0
        for pk, stripe_id in StripeEvent.objects.filter(stripe_id__in=stripe_ids).values_list(
            "pk", "stripe_id"
        ):
            try:
                outcome = inbox.process(pk)
            except Exception as exc:
                outcome = f"failed: {type(exc).__name__}: {exc}"
                failed += 1
            self.stdout.write(f"  {stripe_id}: {outcome}")
        return failed


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "none"
