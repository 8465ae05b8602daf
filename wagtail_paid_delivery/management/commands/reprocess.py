"""``manage.py reprocess``: run stored Stripe events again (after fixing what made them fail)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import inbox
from ...models import StripeEvent


class Command(BaseCommand):
    help = (
        "Run stored Stripe events again: the ones named (evt_…) or every failed one (--failed). "
        "Each is re-read from Stripe, so running one twice never delivers twice. By default "
        "the events are queued for the task cluster; --sync runs them here and now. Exit "
        "status: 0 all done (or queued), 1 some failed or were not found, 2 wrong usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="Stripe event ids")
        parser.add_argument(
            "--failed", action="store_true", help="every event whose status is failed"
        )
        parser.add_argument(
            "--sync", action="store_true", help="run here and now instead of queueing"
        )
        parser.add_argument(
            "--reset-attempts",
            action="store_true",
            help="count attempts from zero again, so automatic retries resume if it fails",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = options["event_ids"]
        if not ids and not options["failed"]:
            raise CommandError("Name event ids (evt_…) or use --failed.", returncode=2)
        events = StripeEvent.objects.none()
        if ids:
            events = StripeEvent.objects.filter(stripe_id__in=ids)
        if options["failed"]:
            events = events | StripeEvent.objects.filter(status=StripeEvent.Status.FAILED)
        found = list(events.order_by("received_at").values_list("pk", "stripe_id", "type"))
        problems = 0
        for missing in sorted(set(ids) - {stripe_id for _, stripe_id, _ in found}):
            self.stderr.write(f"{missing}: no such event stored")
            problems += 1
        if not found:
            self.stdout.write("No events to reprocess.")
        for pk, stripe_id, event_type in found:
            if not self.run_one(pk, f"{stripe_id} ({event_type})", options):
                problems += 1
        if problems:
            raise CommandError(f"{problems} event(s) not processed.", returncode=1)

    def run_one(self, pk: int, label: str, options: dict[str, Any]) -> bool:
        """Queue (or with --sync, run) one event again; False when it failed."""
        inbox.reset(pk, reset_attempts=options["reset_attempts"])
        if not options["sync"]:
            inbox.enqueue(pk)
            self.stdout.write(f"{label}: queued")
            return True
        try:
            outcome = inbox.process(pk)
        except Exception as exc:
            outcome = f"failed: {type(exc).__name__}: {exc}"
        if StripeEvent.objects.get(pk=pk).status == StripeEvent.Status.FAILED:
            self.stderr.write(f"{label}: {outcome}")
            return False
        self.stdout.write(f"{label}: {outcome}")
        return True
