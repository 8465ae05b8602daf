"""``manage.py reprocess``: run stored Stripe events again (after fixing what made them fail)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import tasks
from ...models import StripeEvent
from ...views.webhook import enqueue


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
            reset: dict[str, Any] = {"status": StripeEvent.Status.RECEIVED, "next_attempt_at": None}
            if options["reset_attempts"]:
                reset["attempts"] = 0
            StripeEvent.objects.filter(pk=pk).update(**reset)
            if not options["sync"]:
                enqueue(pk)
                self.stdout.write(f"{stripe_id} ({event_type}): queued")
                continue
            try:
                outcome = tasks.process_stripe_event(pk)
            except Exception as exc:
                outcome = f"failed: {type(exc).__name__}: {exc}"
            event = StripeEvent.objects.get(pk=pk)
            if event.status == StripeEvent.Status.FAILED:
                problems += 1
                self.stderr.write(f"{stripe_id} ({event_type}): {outcome}")
            else:
                self.stdout.write(f"{stripe_id} ({event_type}): {outcome}")
        if problems:
            raise CommandError(f"{problems} event(s) not processed.", returncode=1)
