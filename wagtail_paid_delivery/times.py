"""Times a buyer reads (a link's expiry): with their zone, and on pages also as a relative time.

The one place such a time is formatted. A page shows it in a ``<time datetime="…">`` element that
``static/wagtail_paid_delivery/local-time.js`` rewrites into the buyer's own zone; an email, read
hours later, says the zone and no relative time. :class:`Moment` is what the ``{expires}``
placeholder of DeliveryCopy holds: ``str()`` gives the text, ``__html__`` the element, so the
copy's HTML rendering (which escapes with ``conditional_escape``) gets the element and its text
rendering the words.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _


def zone_label(moment: datetime) -> str:
    """The zone ``moment`` (an aware local time) is in: "UTC", or "CET (UTC+01:00)"."""
    name = moment.tzname() or ""
    offset = moment.utcoffset()
    if offset is None:
        return name
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0 and name in ("UTC", "GMT", "Z", "UTC+00:00"):
        return "UTC"
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    utc = f"UTC{sign}{hours:02d}:{rest:02d}"
    # Zones without an abbreviation (tzdata gives "+03" for Europe/Istanbul) say only the offset.
    if not name or name[0] in "+-" or name == utc:
        return utc
    return f"{name} ({utc})"


def absolute(moment: datetime) -> str:
    """``moment`` in the site's time zone, with that zone: "3 December 2026, 9:45 a.m. UTC"."""
    local = timezone.localtime(moment)
    return f"{formats.date_format(local, 'DATETIME_FORMAT')} {zone_label(local)}"


def relative(moment: datetime, now: datetime | None = None) -> str:
    """How far ``moment`` is from now, in words: "in 23 hours", "2 days ago"."""
    now = now or timezone.now()
    if moment >= now:
        return _("in %(time)s") % {"time": timeuntil(moment, now, depth=1)}
    return _("%(time)s ago") % {"time": timeuntil(now, moment, depth=1)}


def time_element(moment: datetime, *, with_relative: bool = True) -> SafeString:
    """``<time datetime="ISO">absolute</time> (in 23 hours)``: the form pages show."""
    element = format_html(
        '<time datetime="{}" data-pd-local-time>{}</time>',
        moment.astimezone(UTC).isoformat(timespec="seconds"),
        absolute(moment),
    )
    if not with_relative:
        return element
    return format_html('{} <span class="pd-relative-time">({})</span>', element, relative(moment))


class Moment:
    """A time for a DeliveryCopy placeholder: words in text, a ``<time>`` element in HTML.

    ``with_relative``: also say how far it is ("in 23 hours"); pages do, emails do not (they are
    read later, when "in 23 hours" is no longer true).
    """

    def __init__(self, moment: datetime, *, with_relative: bool = False) -> None:
        self.moment = moment
        self.with_relative = with_relative

    def __str__(self) -> str:
        if self.with_relative:
            return f"{absolute(self.moment)} ({relative(self.moment)})"
        return absolute(self.moment)

    def __html__(self) -> SafeString:
        return time_element(self.moment, with_relative=self.with_relative)
