"""The shop's numbers for the admin dashboard: sales, revenue and downloads per day, and what
needs attention (failing Stripe events, emails to buyers that do not go out, a silent task
cluster).

Only domain reads here; the dashboard panel (``admin.dashboard``) renders what
:func:`dashboard` returns. Sales and revenue count purchases in the mode of the configured
Stripe key (a test key shows test purchases), paid through Stripe (complimentary grants are
not sales).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import currencies, heartbeat, stripe_api
from .models import DownloadEvent, OutboundEmail, Purchase, StripeEvent

#: The dashboard's window, in days (today included).
DAYS = 30
#: This many events failing with a retry pending is worth a warning (a few are routine).
MANY_RETRYING = 5


@dataclass(frozen=True)
class Day:
    date: date
    sales: int
    downloads: int


@dataclass(frozen=True)
class Revenue:
    currency: str
    #: Paid minus refunded, in the currency's minor units.
    amount: int
    display: str


@dataclass
class ShopStats:
    since: date
    livemode: bool
    days: list[Day]
    revenue: list[Revenue]
    #: Failed events with no next attempt (they wait for someone to reprocess them).
    failed_events: int
    #: Failed events with a retry scheduled.
    retrying_events: int
    last_beat: datetime | None
    cluster_stale: bool
    #: Emails to buyers that failed every attempt (the email outbox gave up on them).
    failed_emails: int = 0
    #: Emails to buyers whose last attempt failed, waiting for the next one.
    retrying_emails: int = 0

    @property
    def sales(self) -> int:
        return sum(d.sales for d in self.days)

    @property
    def downloads(self) -> int:
        return sum(d.downloads for d in self.days)


def _per_day(rows: object) -> dict[date, int]:
    return {row["day"]: row["n"] for row in rows}  # type: ignore[attr-defined]


def dashboard(now: datetime | None = None, *, livemode: bool | None = None) -> ShopStats:
    """The last :data:`DAYS` days (local dates) of sales, revenue and downloads, and the
    inbox's and cluster's health."""
    now = now or timezone.now()
    livemode = stripe_api.secret_key_is_live() if livemode is None else livemode
    today = timezone.localdate(now)
    since = today - timedelta(days=DAYS - 1)
    start = timezone.make_aware(datetime.combine(since, datetime.min.time()))
    tz = timezone.get_current_timezone()
    sales = Purchase.objects.filter(
        paid_at__gte=start, livemode=livemode, source=Purchase.Source.CHECKOUT
    )
    sales_per_day = _per_day(
        sales.annotate(day=TruncDate("paid_at", tzinfo=tz)).values("day").annotate(n=Count("pk"))
    )
    downloads = DownloadEvent.objects.filter(created_at__gte=start, counted=True)
    downloads_per_day = _per_day(
        downloads.annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day")
        .annotate(n=Count("pk"))
    )
    days = [
        Day(d, sales_per_day.get(d, 0), downloads_per_day.get(d, 0))
        for d in (since + timedelta(days=i) for i in range(DAYS))
    ]
    revenue = [
        Revenue(row["currency"], row["net"], currencies.format_price(row["net"], row["currency"]))
        for row in sales.values("currency")
        .annotate(net=Sum(F("amount") - F("amount_refunded")))
        .order_by("currency")
    ]
    failed = StripeEvent.objects.filter(status=StripeEvent.Status.FAILED)
    emails = OutboundEmail.objects.filter(
        status__in=(OutboundEmail.Status.FAILED, OutboundEmail.Status.PENDING), attempts__gt=0
    )
    email_counts = dict(emails.values_list("status").annotate(n=Count("pk")).order_by())
    last = heartbeat.last_beat()
    return ShopStats(
        since=since,
        livemode=livemode,
        days=days,
        revenue=revenue,
        failed_events=failed.filter(next_attempt_at__isnull=True).count(),
        retrying_events=failed.filter(next_attempt_at__isnull=False).count(),
        last_beat=last,
        cluster_stale=heartbeat.is_stale(last, now),
        failed_emails=email_counts.get(OutboundEmail.Status.FAILED, 0),
        retrying_emails=email_counts.get(OutboundEmail.Status.PENDING, 0),
    )


def needs_attention(stats: ShopStats) -> bool:
    """Whether the inbox needs someone: events failed for good, or many retrying at once."""
    return bool(stats.failed_events) or stats.retrying_events >= MANY_RETRYING
