"""``manage.py cleanup``: remove records past their ``RETENTION`` period (``retention``)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from ... import retention


class Command(BaseCommand):
    help = (
        "Remove records past their RETENTION period: old download events, links that expired "
        "long ago, processed and ignored Stripe events, and never-paid purchases Stripe "
        "reported expired or failed. Paid purchases are never removed. Works in small "
        "batches, so it can run while the shop is open. Exit status: 0 done (also when "
        "nothing was due), 1 stopped by a database error (what was removed stays removed; "
        "run it again), 2 wrong usage or settings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would be removed"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=retention.BATCH_SIZE,
            help=f"rows removed per transaction (default {retention.BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.", returncode=2)
        try:
            result = retention.cleanup(dry_run=options["dry_run"], batch_size=batch_size)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"Stopped by a database error: {exc}. Run it again to carry on.", returncode=1
            ) from exc
        verb = "Would remove" if result.dry_run else "Removed"
        for kind in retention.KINDS:
            self.stdout.write(f"{verb} {result.removed[kind]} {retention.LABELS[kind]}.")
        if result.total == 0:
            self.stdout.write("Nothing was due.")
