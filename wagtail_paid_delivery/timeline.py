"""What happened to one purchase, oldest first, and whether its buyer can download now.

The shop desk's inspect view renders ``build_timeline`` and ``link_overview``; it computes
nothing itself. The timeline merges *sources*, each a function from the purchase's ``Facts`` to
entries: the purchase's own timestamps (status changes), the Stripe events received for it,
the links issued and revoked, the emails sent, the download requests (served and refused) and
Wagtail's log entries (the desk's actions, each naming its editor). A new kind of record (the
email outbox) is one more function in ``SOURCES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from wagtail.log_actions import registry as log_registry

from . import currencies, desk, links
from .models import DownloadEvent, DownloadLink, OutboundEmail, Purchase, StripeEvent
from .payments import stripe_events

S = Purchase.Status

#: Entry levels, for the eye: "ok" (good news), "info", "warning" (refused, ended), "error".
OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"

#: Download requests shown at most (the most recent); players and resumes can make many.
MAX_DOWNLOAD_EVENTS = 500
#: A desk log entry within this long of a status timestamp is that change's record.
SAME_CHANGE = timedelta(minutes=1)


@dataclass(frozen=True)
class Entry:
    """One line of the timeline."""

    at: datetime
    #: "purchase", "status", "stripe", "link", "email", "download" or "editor".
    kind: str
    title: str
    detail: str = ""
    #: Who or what did it: the buyer, Stripe, the system, an editor's name.
    actor: str = ""
    level: str = INFO


@dataclass
class Facts:
    """What the sources read, loaded once per timeline."""

    purchase: Purchase
    links: list[DownloadLink] = field(default_factory=list)

    @cached_property
    def log_entries(self) -> list[Any]:
        entries = log_registry.get_logs_for_instance(self.purchase).select_related("user")
        return list(entries.order_by("timestamp", "pk"))

    @cached_property
    def emails(self) -> list[OutboundEmail]:
        """The emails the outbox recorded about the purchase (alone, or listed in a resend)."""
        about = Q(purchase=self.purchase) | Q(purchases=self.purchase)
        return list(OutboundEmail.objects.filter(about).distinct().order_by("pk"))

    @cached_property
    def file_titles(self) -> dict[int, str]:
        product = self.purchase.product_page
        return {f.pk: f.title for f in product.product_files} if product is not None else {}

    def file_title(self, file_id: int | None) -> str:
        if file_id is None:
            return str(_("unknown file"))
        return self.file_titles.get(file_id) or str(_("file #%(id)s (removed)")) % {"id": file_id}


def facts_for(purchase: Purchase) -> Facts:
    return Facts(purchase, list(DownloadLink.objects.filter(purchase=purchase).order_by("pk")))


def _when(value: datetime) -> str:
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


# Sources ------------------------------------------------------------------------------------

#: Status → (what the timeline calls entering it, its level).
STATUS_TIMESTAMPS: list[tuple[str, str, Any, str]] = [
    ("paid_at", S.PAID, _("Paid"), OK),
    ("failed_at", S.FAILED, _("Payment failed"), WARNING),
    ("expired_at", S.EXPIRED, _("Checkout expired unpaid"), INFO),
    ("disputed_at", S.DISPUTED, _("Access suspended (disputed)"), WARNING),
    ("refunded_at", S.REFUNDED, _("Refunded: access ended"), WARNING),
    ("revoked_at", S.REVOKED, _("Revoked: access ended"), WARNING),
]


def _recorded_by_editor(facts: Facts, status: str, at: datetime) -> bool:
    return any(
        (entry.data or {}).get("status") == status and abs(entry.timestamp - at) <= SAME_CHANGE
        for entry in facts.log_entries
    )


def purchase_entries(facts: Facts) -> Iterable[Entry]:
    """The purchase's start and each status it entered (the state machine stamps each one).

    A change an editor made is shown by its log entry instead (it names them and the reason).
    """
    purchase = facts.purchase
    granted = purchase.source == Purchase.Source.GRANT
    if granted:
        # The desk's log entry says who granted it and why; without one (granted in code):
        if not any(entry.action == desk.GRANT for entry in facts.log_entries):
            yield Entry(purchase.created_at, "purchase", str(_("Granted (no payment)")))
    else:
        detail = str(_("%(price)s, %(mode)s")) % {
            "price": purchase.price_display,
            "mode": _("live mode") if purchase.livemode else _("test mode"),
        }
        yield Entry(
            purchase.created_at, "purchase", str(_("Checkout started")), detail, str(_("buyer"))
        )
    for name, status, title, level in STATUS_TIMESTAMPS:
        at = getattr(purchase, name)
        if at is None or _recorded_by_editor(facts, status, at) or (granted and status == S.PAID):
            continue
        # Only the current status keeps its reason.
        detail = purchase.status_reason if purchase.status == status else ""
        yield Entry(at, "status", str(title), detail, "Stripe", level)


#: Stripe event types in the words of the shop.
EVENT_TITLES = {
    "checkout.session.completed": _("Checkout completed"),
    "checkout.session.async_payment_succeeded": _("Delayed payment succeeded"),
    "checkout.session.async_payment_failed": _("Delayed payment failed"),
    "checkout.session.expired": _("Checkout session expired"),
    "payment_intent.succeeded": _("Payment succeeded"),
    "charge.refunded": _("Charge refunded"),
    "refund.created": _("Refund created"),
    "refund.updated": _("Refund updated"),
    "charge.dispute.created": _("Dispute opened"),
    "charge.dispute.closed": _("Dispute closed"),
    "invoice.payment_succeeded": _("Invoice paid"),
}


def _event_detail(event: StripeEvent) -> tuple[str, str]:
    if event.status == StripeEvent.Status.FAILED:
        if event.next_attempt_at:
            retry = str(_("attempt %(n)s failed, next attempt %(when)s")) % {
                "n": event.attempts,
                "when": _when(event.next_attempt_at),
            }
        else:
            retry = str(_("failed for good after %(n)s attempts")) % {"n": event.attempts}
        return f"{retry}: {event.last_error}", ERROR
    if event.status == StripeEvent.Status.RECEIVED:
        return str(_("received, not processed yet")), WARNING
    status = event.get_status_display()
    return (f"{status}: {event.last_error}" if event.last_error else str(status)), INFO


#: Refund events the inbox leaves alone: ``charge.refunded`` (handled) carries every refund.
REFUND_EVENTS = ("refund.created", "refund.updated")


def _refund_money(event: StripeEvent) -> str:
    """How much a refund event is about, in the payment's currency; "" for other events."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    obj = payload.get("data", {}).get("object", {}) if isinstance(payload.get("data"), dict) else {}
    currency = obj.get("currency") if isinstance(obj, dict) else None
    if not isinstance(currency, str) or not currency:
        return ""
    if event.type == "charge.refunded" and isinstance(obj.get("amount_refunded"), int):
        return str(_("%(refunded)s of %(amount)s refunded")) % {
            "refunded": currencies.format_price(obj["amount_refunded"], currency),
            "amount": currencies.format_price(int(obj.get("amount") or 0), currency),
        }
    if event.type in REFUND_EVENTS and isinstance(obj.get("amount"), int):
        return f"{obj.get('id', '')} {currencies.format_price(obj['amount'], currency)} " + str(
            obj.get("status", "")
        )
    return ""


def stripe_entries(facts: Facts) -> Iterable[Entry]:
    """Each Stripe event received about the purchase, with its outcome (and, for refunds,
    the amounts)."""
    for event in stripe_events(facts.purchase).order_by("received_at", "pk"):
        outcome, level = _event_detail(event)
        if event.type in REFUND_EVENTS and event.status == StripeEvent.Status.IGNORED:
            outcome = str(_("noted (the charge.refunded event applies it)"))
        title = EVENT_TITLES.get(event.type, event.type)
        parts = [f"{event.type} {event.stripe_id}", _refund_money(event), outcome]
        detail = " · ".join(p for p in parts if p)
        yield Entry(event.received_at, "stripe", str(title), detail, "Stripe", level)


#: Why a link was issued, in the timeline's words (DownloadLink.Reason's labels are short).
LINK_REASONS: dict[str, Any] = {
    DownloadLink.Reason.WEBHOOK: _("for the delivery email"),
    DownloadLink.Reason.SUCCESS_PAGE: _("on the success page"),
    DownloadLink.Reason.RESEND: _("at the buyer's resend request"),
    DownloadLink.Reason.LIBRARY: _("in the buyer's library"),
    DownloadLink.Reason.ADMIN: _("by an editor"),
}


def _limit_display(limit: int | None) -> str:
    if limit is None:
        return str(_("unlimited downloads"))
    return str(_("%(n)s downloads per file")) % {"n": limit}


def issued_expiry(facts: Facts, link: DownloadLink) -> datetime:
    """The expiry ``link`` was issued with: before its first extension (the desk logs the
    expiry it replaced), else its current one."""
    for entry in facts.log_entries:
        data = entry.data or {}
        if entry.action == desk.EXTEND_LINK and data.get("link") == link.pk:
            previous = parse_datetime(str(data.get("previous") or ""))
            if previous is not None:
                return previous
    return link.expires_at


def link_entries(facts: Facts) -> Iterable[Entry]:
    """Each link issued (why, until when, how many downloads) and each link revoked."""
    for link in facts.links:
        reason = LINK_REASONS.get(link.reason, link.get_reason_display())
        detail = str(_("valid until %(expires)s, %(limit)s")) % {
            "expires": _when(issued_expiry(facts, link)),
            "limit": _limit_display(link.download_limit),
        }
        title = str(_("Link #%(id)s issued %(reason)s")) % {"id": link.pk, "reason": reason}
        actor = str(_("buyer")) if link.reason in ("success_page", "resend", "library") else ""
        yield Entry(link.created_at, "link", title, detail, actor or str(_("system")))
        if link.revoked_at is not None:
            title = str(_("Link #%(id)s revoked")) % {"id": link.pk}
            yield Entry(link.revoked_at, "link", title, "", "", WARNING)


#: Each kind of email, in the timeline's words.
EMAIL_KINDS: dict[str, Any] = {
    OutboundEmail.Kind.DELIVERY: _("Delivery email"),
    OutboundEmail.Kind.RESEND: _("Links sent again (the buyer asked)"),
    OutboundEmail.Kind.DESK: _("Delivery email from the shop desk"),
    OutboundEmail.Kind.LIBRARY_SIGN_IN: _("Library sign-in link (the buyer asked)"),
    OutboundEmail.Kind.NEW_SALE: _("New sale notice to the shop"),
    OutboundEmail.Kind.PAYMENT_FAILED: _("Failed payment email"),
}


def email_entries(facts: Facts) -> Iterable[Entry]:
    """Emails to the buyer, as the email outbox recorded them: sent, waiting for another
    attempt (with the last error), failed for good, or not sent (and why)."""
    emails = facts.emails
    sent = facts.purchase.delivery_email_sent_at
    if sent is not None and not any(e.kind == OutboundEmail.Kind.DELIVERY for e in emails):
        # A delivery email sent before the outbox kept its emails.
        yield Entry(sent, "email", str(_("Delivery email sent")), "", str(_("system")), OK)
    for email in emails:
        yield email_entry(email)


def email_entry(email: OutboundEmail) -> Entry:
    """One email's line: what became of it, and when."""
    values = {"kind": EMAIL_KINDS.get(email.kind, email.get_kind_display())}
    tried = ngettext("after %(n)s attempt", "after %(n)s attempts", email.attempts) % {
        "n": email.attempts
    }
    last = email.last_attempt_at or email.created_at
    status = OutboundEmail.Status
    if email.status == status.SENT:
        at, title, detail, level = (email.sent_at or last), _("%(kind)s sent"), "", OK
        detail = tried if email.attempts > 1 else ""
    elif email.status == status.FAILED:
        title, level = _("%(kind)s NOT sent: every attempt failed"), ERROR
        at, detail = last, f"{tried}: {email.last_error}"
    elif email.status == status.CANCELLED:
        at, title, detail, level = last, _("%(kind)s not sent"), email.last_error, INFO
    elif email.attempts:
        title, level = _("%(kind)s not sent yet, tried again automatically"), WARNING
        at, detail = last, f"{tried}: {email.last_error}"
    else:
        at, title, detail, level = email.created_at, _("%(kind)s waiting to be sent"), "", INFO
    return Entry(at, "email", str(title) % values, detail, str(_("system")), level)


#: DownloadEvent outcomes in the shop's words, and their level.
DOWNLOAD_OUTCOMES: dict[str, tuple[Any, str]] = {
    "served": (_("Download served"), OK),
    "not_sent": (_("Download started, nothing sent (not counted)"), INFO),
    "head": (_("File checked (HEAD, not counted)"), INFO),
    "expired": (_("Download refused: link expired"), WARNING),
    "used_up": (_("Download refused: download limit reached"), WARNING),
    "revoked": (_("Download refused: link revoked"), WARNING),
    "not_paid": (
        _("Download refused: purchase not paid (refunded, revoked or suspended)"),
        WARNING,
    ),
    "not_satisfiable": (_("Download refused: range not satisfiable"), WARNING),
    "hook": (_("Download answered by the site's hook"), INFO),
    "missing_file": (_("Download failed: file missing from storage"), ERROR),
    "invalid": (_("Download refused: file not part of the product"), WARNING),
    "too_large": (_("Download all refused: the archive would reach 4 GiB"), WARNING),
}


def _download_detail(facts: Facts, event: DownloadEvent) -> str:
    parts = [facts.file_title(event.file_id), str(_("link #%(id)s")) % {"id": event.link_id}]
    if event.bytes_sent is not None:
        parts.append(filesizeformat(event.bytes_sent))
    if event.range_header:
        parts.append(event.range_header)
    if event.outcome == "served":
        parts.append(str(_("counted")) if event.counted else str(_("continuation, not counted")))
    if "." in event.handoff:  # an archive member's hand-off (links.ArchiveHandoff.member)
        parts.append(str(_("in a “Download all” archive")))
    if event.ip_address:
        parts.append(str(_("IP %(ip)s (truncated)")) % {"ip": event.ip_address})
    return " · ".join(parts)


def download_entries(facts: Facts) -> Iterable[Entry]:
    """Each request for a file's bytes with one of the purchase's links: served or refused."""
    events = DownloadEvent.objects.filter(link__purchase=facts.purchase)
    total = events.count()
    shown = list(events.order_by("-created_at", "-pk")[:MAX_DOWNLOAD_EVENTS])
    if total > len(shown):
        title = str(_("%(n)s earlier download requests not shown")) % {"n": total - len(shown)}
        yield Entry(shown[-1].created_at, "download", title, "", "", INFO)
    for event in reversed(shown):
        title, level = DOWNLOAD_OUTCOMES.get(event.outcome, (event.outcome, INFO))
        yield Entry(
            event.created_at,
            "download",
            str(title),
            _download_detail(facts, event),
            str(_("buyer")),
            level,
        )


def editor_entries(facts: Facts) -> Iterable[Entry]:
    """Wagtail's log entries for the purchase: the desk's actions, each with its editor."""
    for entry in facts.log_entries:
        level = WARNING if (entry.data or {}).get("status") in (S.REVOKED, S.DISPUTED) else INFO
        yield Entry(
            entry.timestamp,
            "editor",
            str(entry.message),
            entry.comment,
            entry.user_display_name,
            level,
        )


Source = Callable[[Facts], Iterable[Entry]]
#: The timeline's sources, in the order entries at the same moment are listed.
SOURCES: list[Source] = [
    purchase_entries,
    stripe_entries,
    editor_entries,
    link_entries,
    email_entries,
    download_entries,
]


def build_timeline(purchase: Purchase, facts: Facts | None = None) -> list[Entry]:
    """Everything that happened to ``purchase``, oldest first."""
    facts = facts or facts_for(purchase)
    ranked = [
        (entry.at, rank, index, entry)
        for rank, source in enumerate(SOURCES)
        for index, entry in enumerate(source(facts))
    ]
    return [entry for *_key, entry in sorted(ranked, key=lambda row: row[:3])]


# Links, and whether the buyer can download now ----------------------------------------------


@dataclass(frozen=True)
class FileCount:
    title: str
    count: int
    #: None: unlimited.
    left: int | None


@dataclass(frozen=True)
class LinkSummary:
    link: DownloadLink
    #: "" when the link works now, else links.LinkError.reason ("expired", "revoked",
    #: "not_paid") or "used_up" (every file at its limit).
    problem: str
    files: list[FileCount]

    @property
    def works(self) -> bool:
        return not self.problem

    @property
    def problem_display(self) -> str:
        return str(LINK_PROBLEMS.get(self.problem, self.problem))


#: Why a link does not work, for the shop owner.
LINK_PROBLEMS = {
    "": _("works"),
    "expired": _("expired"),
    "revoked": _("revoked"),
    "not_paid": _("paused: the purchase is not paid"),
    "used_up": _("used up: every file reached its limit"),
}


def _summary(facts: Facts, link: DownloadLink, now: datetime) -> LinkSummary:
    link.purchase = facts.purchase
    counts = links.file_counts(link)
    files = [
        FileCount(title, counts.get(pk, 0), links.downloads_left(link, counts.get(pk, 0)))
        for pk, title in facts.file_titles.items()
    ]
    try:
        links.check_link(link, now=now)
        problem = ""
    except links.LinkRefused as refused:
        problem = refused.reason
    if not problem and files and all(f.left == 0 for f in files):
        problem = "used_up"
    return LinkSummary(link, problem, files)


def link_overview(purchase: Purchase, facts: Facts | None = None) -> list[LinkSummary]:
    """Every link of ``purchase``, newest first: does it work now, and what is left per file."""
    facts = facts or facts_for(purchase)
    now = timezone.now()
    return [_summary(facts, link, now) for link in reversed(facts.links)]


@dataclass(frozen=True)
class Verdict:
    """Can the buyer download now, and if not, why (for the top of the inspect view)."""

    can_download: bool
    text: str


def verdict(purchase: Purchase, overview: list[LinkSummary]) -> Verdict:
    if purchase.status != S.PAID:
        # The reason is a sentence ("Refunded in full."): its full stop would double the one after
        # the brackets.
        why = (purchase.status_reason or purchase.get_status_display()).rstrip(".")
        text = str(_("No: the purchase is %(status)s (%(why)s).")) % {
            "status": purchase.get_status_display(),
            "why": why,
        }
        return Verdict(False, text)
    working = [summary for summary in overview if summary.works]
    if working:
        newest = working[0].link
        text = str(_("Yes, with link #%(id)s, valid until %(expires)s")) % {
            "id": newest.pk,
            "expires": _when(newest.expires_at),
        }
        return Verdict(True, text)
    if not overview:
        return Verdict(False, str(_("No: no link was issued yet. Resend the delivery email.")))
    latest = overview[0]
    text = str(
        _("No: the latest link (#%(id)s) is %(problem)s. Issue a new link or extend it.")
    ) % {
        "id": latest.link.pk,
        "problem": latest.problem_display,
    }
    return Verdict(False, text)


def stripe_dashboard_url(purchase: Purchase) -> str:
    """The payment in Stripe's Dashboard (the test or live one by the purchase's mode); "" when
    there is no payment (pending, granted)."""
    if not purchase.stripe_payment_intent_id:
        return ""
    mode = "" if purchase.livemode else "test/"
    return f"https://dashboard.stripe.com/{mode}payments/{quote(purchase.stripe_payment_intent_id)}"
