"""``manage.py expire_link <order number>``: let a purchase's download links run out now.

A sandbox command, not part of the package: the sandbox has no clock to move forward, so to see
what a buyer sees once a link has expired, this moves the end of that purchase's live links to
the present moment. Links already expired or revoked are left as they were; the purchase and
its downloads counted so far are untouched.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from wagtail_paid_delivery import order_numbers
from wagtail_paid_delivery.models import DownloadLink, Purchase


class Command(BaseCommand):
    help = (
        "Expire now every live download link of the purchase with this order number "
        "(sandbox only: there is no clock to move forward)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "order_number", help="The order number the buyer quotes, e.g. 7KQ4M-XR9TB."
        )

    def handle(self, *args: Any, order_number: str, **options: Any) -> None:
        code = order_numbers.search_suffix(order_number)
        if code is None:
            raise CommandError(f"{order_number!r} is not an order number (like 7KQ4M-XR9TB).")
        purchase = Purchase.objects.filter(order_number__endswith=code).first()
        if purchase is None:
            raise CommandError(f"No purchase has the order number {code}.")
        now = timezone.now()
        with transaction.atomic():
            expired = DownloadLink.objects.filter(
                purchase=purchase, expires_at__gt=now, revoked_at__isnull=True
            ).update(expires_at=now)
        self.stdout.write(
            f"Order {purchase.order_number}: {expired} live download link(s) expired now."
        )
