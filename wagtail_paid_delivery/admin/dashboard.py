"""The shop's panel on the Wagtail dashboard: the last 30 days of sales, revenue and downloads
(small bar charts drawn as inline SVG on the server, no script) and warnings when Stripe events
fail or no task cluster runs. Numbers come from ``stats.dashboard``; this module only draws.
Added by ``wagtail_hooks`` (``construct_homepage_panels``) for editors who may view purchases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.timesince import timesince
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from wagtail.admin.ui.components import Component

from .. import stats

#: The chart's drawing box (SVG user units; it scales to the panel's width).
CHART_WIDTH = 600
CHART_HEIGHT = 90
BAR_AREA = 70


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Chart:
    label: Any
    total: int
    peak: int
    bars: list[Bar]
    first_day: str
    last_day: str


def chart(label: Any, days: list[stats.Day], attribute: str) -> Chart:
    """One bar per day, scaled to the busiest day; each bar's tooltip says its date and count."""
    values = [getattr(day, attribute) for day in days]
    peak = max(values, default=0)
    slot = CHART_WIDTH / max(len(days), 1)
    bars = []
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        height = (BAR_AREA * value / peak) if peak else 0
        # A day with something gets at least a sliver, so "one sale" is not invisible.
        height = max(height, 2) if value else 0
        bars.append(
            Bar(
                x=round(i * slot + 1, 2),
                y=round(BAR_AREA - height, 2),
                width=round(slot - 2, 2),
                height=round(height, 2),
                title=f"{formats.date_format(day.date, 'SHORT_DATE_FORMAT')}: {value}",
            )
        )
    return Chart(
        label=label,
        total=sum(values),
        peak=peak,
        bars=bars,
        first_day=formats.date_format(days[0].date, "MONTH_DAY_FORMAT") if days else "",
        last_day=formats.date_format(days[-1].date, "MONTH_DAY_FORMAT") if days else "",
    )


def _url(name: str, query: str = "") -> str:
    try:
        return reverse(name) + query
    except NoReverseMatch:
        return ""


def warnings(numbers: stats.ShopStats, events_url: str) -> list[dict[str, str]]:
    """What needs the owner: failing events, a silent task cluster; with a link to the events
    concerned when the editor may see them (``events_url``)."""
    found = []
    if numbers.failed_events:
        found.append(
            {
                "text": ngettext(
                    "%(n)s Stripe event failed and will not be retried: fix the cause named on "
                    "it, then reprocess it.",
                    "%(n)s Stripe events failed and will not be retried: fix the cause named on "
                    "them, then reprocess them.",
                    numbers.failed_events,
                )
                % {"n": numbers.failed_events},
                "url": events_url + "?retrying=stuck" if events_url else "",
            }
        )
    if numbers.retrying_events >= stats.MANY_RETRYING:
        found.append(
            {
                "text": str(
                    _("%(n)s Stripe events are failing and being retried (Stripe or mail down?).")
                )
                % {"n": numbers.retrying_events},
                "url": events_url + "?retrying=retrying" if events_url else "",
            }
        )
    found.extend(_email_warnings(numbers))
    if numbers.cluster_stale:
        found.append({"text": _cluster_warning(numbers), "url": ""})
    return found


def _email_warnings(numbers: stats.ShopStats) -> list[dict[str, str]]:
    """Emails to buyers the outbox gave up on, and those waiting for another attempt (each is a
    buyer waiting, so one is worth saying), linked to Shop → Failed emails (the panel's editors
    may view purchases, which is what that listing asks)."""
    emails_url = reverse("wagtail_paid_delivery_emails:index")
    found = []
    if numbers.failed_emails:
        text = ngettext(
            "%(n)s email to a buyer failed every attempt and will not be retried: fix the "
            "cause named on it, then send it again.",
            "%(n)s emails to buyers failed every attempt and will not be retried: fix the "
            "cause named on them, then send them again.",
            numbers.failed_emails,
        ) % {"n": numbers.failed_emails}
        found.append({"text": text, "url": emails_url + "?state=failed"})
    if numbers.retrying_emails:
        text = ngettext(
            "%(n)s email to a buyer could not be sent yet and is being retried (mail server "
            "down?).",
            "%(n)s emails to buyers could not be sent yet and are being retried (mail server "
            "down?).",
            numbers.retrying_emails,
        ) % {"n": numbers.retrying_emails}
        found.append({"text": text, "url": emails_url + "?state=retrying"})
    return found


def _cluster_warning(numbers: stats.ShopStats) -> str:
    if numbers.last_beat is None:
        return str(
            _(
                "No task cluster has run yet: payments are not confirmed and no delivery email "
                "goes out until one runs (manage.py qcluster)."
            )
        )
    return str(
        _(
            "No task cluster has picked up work for %(ago)s (last seen %(when)s): payments wait "
            "to be confirmed and emails to be sent. Check that manage.py qcluster runs."
        )
    ) % {
        "ago": timesince(numbers.last_beat),
        "when": formats.date_format(timezone.localtime(numbers.last_beat), "DATETIME_FORMAT"),
    }


def last_seen(when: datetime | None) -> str:
    """When the cluster last beat, for people ("less than a minute ago", "3 minutes ago")."""
    if when is None:
        return ""
    if timezone.now() - when < timedelta(minutes=1):
        return str(_("less than a minute ago"))
    return str(_("%(ago)s ago")) % {"ago": timesince(when)}


class ShopPanel(Component):
    name = "wagtail_paid_delivery_shop"
    order = 90
    template_name = "wagtail_paid_delivery/admin/dashboard_panel.html"

    def __init__(self, numbers: stats.ShopStats, *, can_view_events: bool) -> None:
        self.numbers = numbers
        self.can_view_events = can_view_events

    def get_context_data(self, parent_context: Any = None) -> dict[str, Any]:
        numbers = self.numbers
        events_url = _url("wagtail_paid_delivery_events:index") if self.can_view_events else ""
        return {
            "heading": ngettext(
                "Shop: the last %(days)s day", "Shop: the last %(days)s days", stats.DAYS
            )
            % {"days": stats.DAYS},
            "last_seen": last_seen(numbers.last_beat),
            "numbers": numbers,
            "days": stats.DAYS,
            "sales_chart": chart(_("Sales per day"), numbers.days, "sales"),
            "downloads_chart": chart(_("Downloads per day"), numbers.days, "downloads"),
            "warnings": warnings(numbers, events_url),
            "purchases_url": _url("wagtail_paid_delivery_purchases:index"),
            "events_url": events_url,
            "chart_width": CHART_WIDTH,
            "chart_height": CHART_HEIGHT,
            "bar_area": BAR_AREA,
        }
