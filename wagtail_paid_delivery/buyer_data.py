"""Everything stored about one buyer's email address: find it, export it, erase it.

A buyer asks what the shop keeps about them, or asks to be forgotten (GDPR articles 15 and 17).
The subject is an email address: the only thing that ties a purchase to a person here.

- ``find`` gathers the records: the purchases made with the address, their links, download
  requests, emails, the Stripe events about them or whose payload mentions the address, the
  Wagtail log entries about the purchases, and the resend requests django-q2 kept.
- ``export`` makes a plain dict of them (a JSON download in the admin). It never holds a token
  or a token's hash (neither is the buyer's data, and a hash is what a token is checked against).
- ``erase`` keeps what accounting must keep (each purchase's product, amount, currency,
  refunds, dates, status and Stripe ids) and removes the rest: the address, the user account,
  IPs and user agents of download requests, names and addresses in stored Stripe payloads
  (every payload is cut down to ids, amounts and the app's own metadata), the recipients and
  errors of emails. Live links are revoked and emails still waiting are cancelled. It is
  recorded as a Wagtail log entry per purchase, with counts and never the address.

Addresses are compared as ``address_key`` says: ASCII letters in any case, the domain as DNS
reads it (IDNA), every other character exactly. A look-alike (a Kelvin sign for a K, a long s
for an s in the local part) is another mailbox and never reaches this buyer's data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from wagtail.log_actions import LogFormatter
from wagtail.log_actions import log as log_action
from wagtail.log_actions import registry as log_registry

from . import desk, metadata, timeline
from .addresses import ASCII_LOWER, address_digest, address_key, same_address
from .models import (
    DownloadEvent,
    DownloadLink,
    OutboundEmail,
    Purchase,
    StripeEvent,
    UpdateOptOut,
    UpdateRecipient,
)

#: Wagtail log actions (registered by wagtail_hooks.py).
EXPORT = "wagtail_paid_delivery.buyer_data_export"
ERASE = "wagtail_paid_delivery.buyer_data_erase"
#: What replaces an address found in free text (a reason, an error, a log entry's data).
ERASED = "[erased]"
#: django-q2's task that emails a buyer their links: its arguments hold the address typed.
RESEND_TASK = "wagtail_paid_delivery.tasks.resend_links"

#: Anything shaped like an address inside free text.
_ADDRESS_SHAPED = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")


# Comparing addresses -----------------------------------------------------------------------


def _local_prefix(email: str) -> str:
    """The database's coarse filter: rows whose address starts with the same local part in any
    case; ``same_address`` then decides (the database's idea of case is not ours)."""
    return email.strip().rpartition("@")[0] + "@"


def _mentions(value: Any, email: str) -> bool:
    """Whether a JSON value holds ``email`` in any string (alone or inside text)."""
    key = address_key(email)
    return any(
        same_address(text, email) or key in text.translate(ASCII_LOWER) for text in _strings(value)
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# Finding -----------------------------------------------------------------------------------


@dataclass
class BuyerRecords:
    """What is stored about one address (``find``)."""

    email: str
    purchases: list[Purchase]
    #: Emails about the purchases, or to the address.
    emails: list[OutboundEmail]
    #: Stripe events about the purchases, or whose payload mentions the address.
    stripe_events: list[StripeEvent]
    #: django-q2's kept resend tasks for the address.
    resend_tasks: list[Any] = field(default_factory=list)
    #: The ids of ``stripe_events`` found through the purchases (the rest only mention it).
    purchase_event_ids: set[int] = field(default_factory=set)

    @cached_property
    def links(self) -> list[DownloadLink]:
        return list(DownloadLink.objects.filter(purchase__in=self.purchases).order_by("pk"))

    @cached_property
    def download_events(self) -> list[DownloadEvent]:
        events = DownloadEvent.objects.filter(link__purchase__in=self.purchases)
        return list(events.order_by("created_at", "pk"))

    @cached_property
    def log_entries(self) -> list[Any]:
        entries = []
        for purchase in self.purchases:
            entries.extend(log_registry.get_logs_for_instance(purchase).order_by("pk"))
        return entries

    @property
    def is_empty(self) -> bool:
        return not (self.purchases or self.emails or self.stripe_events or self.resend_tasks)

    def counts(self) -> dict[str, int]:
        """How many of each kind, for the admin's summary."""
        return {
            "purchases": len(self.purchases),
            "links": len(self.links),
            "download_events": len(self.download_events),
            "emails": len(self.emails),
            "stripe_events": len(self.stripe_events),
            "log_entries": len(self.log_entries),
            "resend_requests": len(self.resend_tasks),
        }


def purchases_of(email: str) -> list[Purchase]:
    """The purchases made with ``email`` (any spelling ``same_address`` accepts)."""
    if not email.strip():
        return []
    candidates = Purchase.objects.filter(email__istartswith=_local_prefix(email))
    return [p for p in candidates.order_by("created_at", "pk") if same_address(p.email, email)]


def emails_of(email: str, purchases: list[Purchase]) -> list[OutboundEmail]:
    about = Q(purchase__in=purchases) | Q(purchases__in=purchases)
    found = {e.pk: e for e in OutboundEmail.objects.filter(about).distinct()}
    for candidate in OutboundEmail.objects.filter(to__istartswith=_local_prefix(email)):
        if same_address(candidate.to, email):
            found[candidate.pk] = candidate
    return [found[pk] for pk in sorted(found)]


def events_of_purchases(purchases: list[Purchase]) -> dict[int, StripeEvent]:
    """The Stripe events about ``purchases`` (as their timelines find them), by pk."""
    found: dict[int, StripeEvent] = {}
    for purchase in purchases:
        found.update((e.pk, e) for e in timeline.stripe_events(purchase))
    return found


def stripe_events_of(email: str, about: dict[int, StripeEvent]) -> list[StripeEvent]:
    """``about`` (the purchases' events) and the events whose payload mentions ``email``."""
    found = dict(about)
    # The payload as text, coarsely filtered by the local part, then read properly.
    texts = StripeEvent.objects.annotate(text=Cast("payload", TextField()))
    for event in texts.filter(text__icontains=_local_prefix(email)).exclude(pk__in=found):
        if _mentions(event.payload, email):
            found[event.pk] = event
    return [found[pk] for pk in sorted(found)]


def resend_tasks_of(email: str) -> list[Any]:
    """The resend requests django-q2 kept (their first argument is the address typed)."""
    from django_q.models import Task  # django-q2's model; its app may load after ours

    kept = Task.objects.filter(func=RESEND_TASK).order_by("started")
    return [t for t in kept if t.args and same_address(str(t.args[0]), email)]


def find(email: str) -> BuyerRecords:
    """Everything stored about ``email``."""
    email = email.strip()
    purchases = purchases_of(email)
    about = events_of_purchases(purchases)
    return BuyerRecords(
        purchase_event_ids=set(about),
        email=email,
        purchases=purchases,
        emails=emails_of(email, purchases) if email else [],
        stripe_events=stripe_events_of(email, about) if email else [],
        resend_tasks=resend_tasks_of(email) if email else [],
    )


# Export ------------------------------------------------------------------------------------

#: Said in every export, so the buyer knows what is left out and why.
NOT_INCLUDED = [
    "Download link tokens: only the buyer's email or page ever held them; the shop keeps a "
    "SHA-256 of each, which is how a token is checked, not information about the buyer.",
    "Stripe event payloads: listed by id and type; Stripe holds them and exports them on request.",
    "Names of the shop's staff who acted on a purchase.",
]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _purchase_dict(purchase: Purchase) -> dict[str, Any]:
    return {
        "id": str(purchase.public_id),
        "product": purchase.product_title,
        "amount": str(purchase.amount_major),
        "currency": purchase.currency,
        "amount_refunded": str(purchase.amount_refunded_major),
        "status": purchase.status,
        "status_reason": purchase.status_reason,
        "source": purchase.source,
        "livemode": purchase.livemode,
        "email": purchase.email,
        "user_id": purchase.user_id,
        "stripe_checkout_session_id": purchase.stripe_checkout_session_id,
        "stripe_payment_intent_id": purchase.stripe_payment_intent_id,
        "created_at": _iso(purchase.created_at),
        "paid_at": _iso(purchase.paid_at),
        "refunded_at": _iso(purchase.refunded_at),
        "revoked_at": _iso(purchase.revoked_at),
        "disputed_at": _iso(purchase.disputed_at),
        "delivery_email_sent_at": _iso(purchase.delivery_email_sent_at),
        "erased_at": _iso(purchase.erased_at),
    }


def _link_dict(link: DownloadLink) -> dict[str, Any]:
    return {
        "id": link.pk,
        "purchase": str(link.purchase.public_id),
        "issued_for": link.reason,
        "created_at": _iso(link.created_at),
        "expires_at": _iso(link.expires_at),
        "downloads_per_file": link.download_limit,
        "downloads_counted": link.download_count,
        "revoked_at": _iso(link.revoked_at),
    }


def _download_dict(event: DownloadEvent) -> dict[str, Any]:
    return {
        "link": event.link_id,
        "file_id": event.file_id,
        "time": _iso(event.created_at),
        "outcome": event.outcome,
        "counted": event.counted,
        "range": event.range_header,
        "bytes_promised": event.bytes_promised,
        "bytes_sent": event.bytes_sent,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
    }


def _email_dict(email: OutboundEmail) -> dict[str, Any]:
    return {
        "kind": email.kind,
        "to": email.to,
        "status": email.status,
        "attempts": email.attempts,
        "created_at": _iso(email.created_at),
        "sent_at": _iso(email.sent_at),
        "last_error": email.last_error,
    }


def _event_dict(event: StripeEvent) -> dict[str, Any]:
    return {
        "id": event.stripe_id,
        "type": event.type,
        "livemode": event.livemode,
        "received_at": _iso(event.received_at),
        "status": event.status,
    }


def _log_dict(entry: Any) -> dict[str, Any]:
    return {
        "purchase": entry.object_id,
        "action": entry.action,
        "message": str(entry.message),
        "comment": entry.comment,
        "time": _iso(entry.timestamp),
    }


def export(email: str, *, user: Any = None) -> dict[str, Any]:
    """Everything stored about ``email``, as JSON-ready data; logged on each purchase."""
    records = find(email)
    link_purchases = {p.pk: p for p in records.purchases}
    for link in records.links:
        link.purchase = link_purchases[link.purchase_id]
    data = {
        "email": records.email,
        "exported_at": _iso(timezone.now()),
        "matching": "Addresses compared with ASCII letters in any case and the domain as DNS "
        "reads it; other characters exactly.",
        "purchases": [_purchase_dict(p) for p in records.purchases],
        "download_links": [_link_dict(link) for link in records.links],
        "download_requests": [_download_dict(e) for e in records.download_events],
        "emails": [_email_dict(e) for e in records.emails],
        "stripe_events": [_event_dict(e) for e in records.stripe_events],
        "log_entries": [_log_dict(e) for e in records.log_entries],
        "resend_requests": [{"time": _iso(t.started)} for t in records.resend_tasks],
        "update_emails": _update_emails_dict(records.email),
        "not_included": NOT_INCLUDED,
    }
    if user is not None:
        with transaction.atomic():
            for purchase in records.purchases:
                log_action(purchase, EXPORT, user=user, title=desk.log_title(purchase))
    return data


def _update_emails_dict(email: str) -> dict[str, Any]:
    opt_out = UpdateOptOut.objects.filter(address_digest=address_digest(email)).first()
    return {
        "unsubscribed": opt_out is not None,
        "unsubscribed_at": _iso(opt_out.created_at) if opt_out else None,
    }


# Erase -------------------------------------------------------------------------------------

#: The keys a Stripe payload keeps once its buyer is erased, at any depth: ids, amounts,
#: states and the app's metadata. Names, addresses, emails, phones, card details and free
#: text (descriptions, custom fields) are not among them.
PAYLOAD_KEYS = frozenset(
    {
        "id",
        "object",
        "type",
        "created",
        "livemode",
        "api_version",
        "data",
        "amount",
        "amount_total",
        "amount_subtotal",
        "amount_refunded",
        "amount_captured",
        "currency",
        "status",
        "payment_status",
        "payment_intent",
        "charge",
        "customer",
        "mode",
        "metadata",
        "client_reference_id",
        "refunded",
        "disputed",
        "reason",
        "request",
    }
)
#: The metadata keys kept (the app's own: installation, purchase, product).
METADATA_KEYS = frozenset({metadata.INSTALLATION, metadata.PURCHASE, metadata.PRODUCT})


def redact_payload(value: Any, *, in_metadata: bool = False) -> Any:
    """``value`` with only ``PAYLOAD_KEYS`` (in metadata: ``METADATA_KEYS``) at every depth."""
    if isinstance(value, dict):
        keep = METADATA_KEYS if in_metadata else PAYLOAD_KEYS
        return {
            key: redact_payload(item, in_metadata=key == "metadata")
            for key, item in value.items()
            if key in keep
        }
    if isinstance(value, list):
        return [redact_payload(item) for item in value]
    if isinstance(value, str) and "@" in value:
        return ERASED
    return value


def scrub(value: Any) -> Any:
    """Free text (or JSON data) with every address-shaped word replaced by ``ERASED``."""
    if isinstance(value, str):
        return _ADDRESS_SHAPED.sub(ERASED, value)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


@dataclass
class Erasure:
    """What ``erase`` did, counted."""

    purchases: int = 0
    links_revoked: int = 0
    download_events: int = 0
    emails: int = 0
    emails_cancelled: int = 0
    update_opt_outs: int = 0
    stripe_events: int = 0
    log_entries: int = 0
    resend_requests: int = 0

    @property
    def nothing(self) -> bool:
        return not any(vars(self).values())


def _erase_downloads(records: BuyerRecords, now: datetime, result: Erasure) -> None:
    live = DownloadLink.objects.filter(purchase__in=records.purchases, revoked_at=None)
    result.links_revoked = live.update(revoked_at=now)
    events = DownloadEvent.objects.filter(link__purchase__in=records.purchases)
    result.download_events = events.update(ip_address=None, user_agent="")


def _erase_emails(records: BuyerRecords, result: Erasure) -> None:
    rows = OutboundEmail.objects.filter(pk__in=[e.pk for e in records.emails])
    # One still waiting would go to the address: not sent any more.
    result.emails_cancelled = rows.filter(status=OutboundEmail.Status.PENDING).update(
        status=OutboundEmail.Status.CANCELLED, next_attempt_at=None
    )
    for email in rows:
        email.to = ""
        email.last_error = scrub(email.last_error)
        if email.status == OutboundEmail.Status.CANCELLED and not email.last_error:
            email.last_error = "buyer data erased"
        email.save(update_fields=["to", "last_error"])
    result.emails = len(records.emails)


def _erase_update_records(email: str, result: Erasure) -> None:
    # The opt-out names the address (its digest): it goes. The update notices' recipients keep
    # their rows (what was sent) without the digest, which is unique per notice: the row's own.
    digest = address_digest(email)
    result.update_opt_outs, _ = UpdateOptOut.objects.filter(address_digest=digest).delete()
    for recipient in UpdateRecipient.objects.filter(address_digest=digest):
        recipient.address_digest = f"erased:{recipient.pk}"
        recipient.save(update_fields=["address_digest"])


def _erase_stripe_events(records: BuyerRecords, user: Any, result: Erasure) -> None:
    for event in StripeEvent.objects.filter(pk__in=[e.pk for e in records.stripe_events]):
        event.payload = redact_payload(event.payload)
        event.last_error = scrub(event.last_error)
        event.save(update_fields=["payload", "last_error"])
        if event.pk not in records.purchase_event_ids:
            # Not about one of the purchases (another integration's, or not matched): its own
            # log entry says it was erased.
            log_action(event, ERASE, user=user, data={"payload": True}, title=str(event))
    result.stripe_events = len(records.stripe_events)


def _erase_log_entries(records: BuyerRecords, result: Erasure) -> None:
    for entry in records.log_entries:
        data, label = scrub(entry.data), scrub(entry.label)
        if data != entry.data or label != entry.label:
            entry.data, entry.label = data, label
            entry.save(update_fields=["data", "label"])
            result.log_entries += 1


def _erase_purchases(records: BuyerRecords, user: Any, now: datetime, result: Erasure) -> None:
    for purchase in records.purchases:
        purchase.email = ""
        purchase.user = None
        purchase.status_reason = scrub(purchase.status_reason)
        purchase.erased_at = now
        purchase.save(update_fields=["email", "user", "status_reason", "erased_at", "updated_at"])
        counts = {k: v for k, v in vars(result).items() if k != "purchases"}
        log_action(purchase, ERASE, user=user, data=counts, title=desk.log_title(purchase))
    result.purchases = len(records.purchases)


def erase(email: str, *, user: Any) -> Erasure:
    """Erase ``email``'s personal data, keep the sales records, revoke live links. Irreversible.

    One transaction, with the purchases' rows locked: a Stripe event processed meanwhile waits,
    and finds the purchase erased (``erased_at``: Stripe's copy of the address is not put back;
    only a payment made after the erasure, for a purchase still pending, brings one).
    """
    result = Erasure()
    with transaction.atomic():
        records = find(email)
        pks = [p.pk for p in records.purchases]
        locked = Purchase.objects.select_for_update().filter(pk__in=pks)
        # Read again under the lock: an erasure that ran meanwhile (a double submit) left
        # nothing of this address on them.
        locked_rows = locked.order_by("created_at", "pk")
        records.purchases = [p for p in locked_rows if same_address(p.email, email)]
        now = timezone.now()
        _erase_downloads(records, now, result)
        _erase_emails(records, result)
        _erase_update_records(email, result)
        _erase_log_entries(records, result)
        _erase_stripe_events(records, user, result)
        for task in records.resend_tasks:
            task.delete()
        result.resend_requests = len(records.resend_tasks)
        _erase_purchases(records, user, now, result)
    return result


# How the log shows them --------------------------------------------------------------------


class _ExportFormatter(LogFormatter):
    label = _("Shop desk: export a buyer's data")
    message = _("Buyer's data exported (everything stored about their address)")


class _EraseFormatter(LogFormatter):
    label = _("Shop desk: erase a buyer's data")

    def format_message(self, log_entry: Any) -> str:
        data = log_entry.data or {}
        if data.get("payload"):
            return str(_("Buyer's data erased from this event's payload"))
        return str(
            _(
                "Buyer's data erased: address, account, IPs and user agents removed; "
                "%(links)s live links revoked, %(emails)s emails and %(events)s Stripe events "
                "anonymised"
            )
        ) % {
            "links": data.get("links_revoked", 0),
            "emails": data.get("emails", 0),
            "events": data.get("stripe_events", 0),
        }


#: Action → formatter class, registered by ``register_log_actions``.
FORMATTERS: dict[str, type[LogFormatter]] = {EXPORT: _ExportFormatter, ERASE: _EraseFormatter}


def register_log_actions(actions: Any) -> None:
    """For Wagtail's ``register_log_actions`` hook."""
    for action, formatter in FORMATTERS.items():
        actions.register_action(action)(formatter)
