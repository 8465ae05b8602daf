"""``manage.py delivery_selftest``: is this site set up to deliver (``selftest``)?"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import selftest


class Command(BaseCommand):
    help = (
        "Check that buyers get their files and nobody else does: system checks, a private "
        "test file asked for over HTTP through MEDIA_URL, STATIC_URL, the storage's unsigned "
        "url() (and nginx's internal location) must not be served, the django-q2 schedules "
        "exist, no Stripe event is stuck; with --stripe, the key works and Stripe's webhook "
        "endpoint points here with our event types. Exit status: 0 all OK, 1 a check failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            help="where this site answers HTTP (default: WAGTAILADMIN_BASE_URL)",
        )
        parser.add_argument(
            "--stripe", action="store_true", help="also ask Stripe (key, webhook endpoint)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        results = selftest.run(options["base_url"], with_stripe=options["stripe"])
        for result in results:
            if result.ok:
                self.stdout.write(self.style.SUCCESS("OK   ") + f"{result.name}: {result.detail}")
            else:
                self.stdout.write(self.style.ERROR("FAIL ") + f"{result.name}: {result.detail}")
                self.stdout.write(f"     hint: {result.hint}")
        failed = sum(not r.ok for r in results)
        if failed:
            raise CommandError(f"{failed} of {len(results)} checks failed.", returncode=1)
        self.stdout.write(f"All {len(results)} checks passed.")
