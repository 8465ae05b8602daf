"""The shop desk's actions on one purchase: what an editor does to help a buyer or end access.

Each action checks that it applies to the purchase as it is now (``refusal``, under the
purchase's row lock), acts through the domain rules (``links``, ``fulfillment``, ``outbox``)
and records a Wagtail log entry naming the editor, all in one transaction: the purchase's
timeline and Wagtail's Site history show who did what, and a failed action leaves neither a
change nor an entry. An email to the buyer is recorded in that transaction and sent by the
email outbox once it commits (outside the row lock), retried if the mail server fails. The
admin views only check permissions, confirm and call.

Log entries carry no email address and no token (a buyer's erasure need not reach them; a
token exists only in the link sent or shown once). Their label is the product and the start of
the purchase's public id.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from wagtail.log_actions import LogFormatter
from wagtail.log_actions import log as log_action

from . import fulfillment, inbox, licenses, links, outbox, payments
from .models import (
    DownloadLink,
    FileDownloadCount,
    LicenseActivation,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

S = Purchase.Status

# Wagtail log actions (registered by wagtail_hooks.py with ``register_log_actions``).
RESEND = "wagtail_paid_delivery.resend"
ISSUE_LINK = "wagtail_paid_delivery.issue_link"
EXTEND_LINK = "wagtail_paid_delivery.extend_link"
RESET_LINK = "wagtail_paid_delivery.reset_link"
REVOKE = "wagtail_paid_delivery.revoke"
SUSPEND = "wagtail_paid_delivery.suspend"
RESTORE = "wagtail_paid_delivery.restore"
CORRECT_EMAIL = "wagtail_paid_delivery.correct_email"
GRANT = "wagtail_paid_delivery.grant"
REPROCESS_EVENT = "wagtail_paid_delivery.reprocess_event"
SEND_EMAIL_AGAIN = "wagtail_paid_delivery.send_email_again"
RELEASE_ACTIVATION = "wagtail_paid_delivery.release_activation"
#: A refund through Stripe (``refunds.refund``; its formatter is ``refunds.RefundFormatter``).
REFUND = "wagtail_paid_delivery.refund"

#: Statuses after which a purchase never gives access again.
FINAL = (S.REFUNDED, S.REVOKED)


class NotApplicable(Exception):
    """The action does not apply to the purchase (or link) as it is now; the message says why,
    in words for the editor."""


# When an action applies ------------------------------------------------------------------------


def _resend_refusal(purchase: Purchase) -> str:
    if purchase.status != S.PAID:
        return str(_("Only a paid purchase has links to send (this one is %(status)s).")) % {
            "status": purchase.get_status_display()
        }
    if not purchase.email:
        return str(_("The purchase has no email address; correct it first."))
    return ""


def _issue_refusal(purchase: Purchase) -> str:
    if purchase.status != S.PAID:
        return str(_("Links are issued only for paid purchases (this one is %(status)s).")) % {
            "status": purchase.get_status_display()
        }
    return ""


def _link_refusal(purchase: Purchase) -> str:
    if purchase.status in FINAL:
        return str(_("The purchase is %(status)s: its links never work again.")) % {
            "status": purchase.get_status_display()
        }
    return ""


def _revoke_refusal(purchase: Purchase) -> str:
    if purchase.status in FINAL:
        return str(_("Access already ended: the purchase is %(status)s.")) % {
            "status": purchase.get_status_display()
        }
    return ""


def _suspend_refusal(purchase: Purchase) -> str:
    if purchase.status != S.PAID:
        return str(_("Only a paid purchase can be suspended (this one is %(status)s).")) % {
            "status": purchase.get_status_display()
        }
    return ""


def _restore_refusal(purchase: Purchase) -> str:
    if purchase.status != S.DISPUTED or purchase.paid_at is None:
        return str(_("Only a suspended purchase (paid, then disputed or suspended) is restored."))
    bundle = purchase.bundle
    if bundle is not None and bundle.status != S.PAID:
        # Access follows the bundle's money: restoring one product of a suspended bundle would
        # give back what its dispute holds.
        return str(_("Its bundle “%(title)s” is %(status)s: restore the bundle instead.")) % {
            "title": bundle.product_title,
            "status": bundle.get_status_display(),
        }
    return ""


def _included_refusal(purchase: Purchase) -> str:
    """An included purchase has no money and no address of its own: its bundle's are used."""
    if purchase.bundle is None:
        return ""
    return str(
        _(
            "This product was included in the bundle “%(title)s” (order %(order)s): act on "
            "the bundle, and its included products follow."
        )
    ) % {"title": purchase.bundle.product_title, "order": purchase.bundle.order_number}


def _email_refusal(purchase: Purchase) -> str:
    # Before payment, Stripe's address replaces ours at delivery: a correction would not stick.
    if purchase.status not in (S.PAID, S.DISPUTED):
        return str(
            _("The address is corrected on paid or suspended purchases (this one is %(status)s).")
        ) % {"status": purchase.get_status_display()}
    return ""


def _refund_refusal(purchase: Purchase) -> str:
    # Money that went through Checkout, before or after access ended (an editor may revoke,
    # then refund). A disputed payment is settled through its dispute, in Stripe.
    if purchase.bundle_id is not None:
        return _included_refusal(purchase)
    if purchase.source != Purchase.Source.CHECKOUT or not purchase.stripe_payment_intent_id:
        return str(_("Only a payment made through Stripe Checkout can be refunded here."))
    if purchase.status == S.DISPUTED:
        return str(_("The payment is disputed: it is settled through the dispute, in Stripe."))
    if purchase.status not in (S.PAID, *FINAL):
        return str(_("Only a paid purchase can be refunded (this one is %(status)s).")) % {
            "status": purchase.get_status_display()
        }
    # Against what was charged (a promotion code can make it less than the price, tax more),
    # so the inspect view stops offering the button as soon as the refund page would refuse.
    if purchase.amount_refunded >= payments.amount_paid(purchase).amount:
        return str(_("Nothing is left to refund: the charge is refunded in full."))
    return ""


def _license_refusal(purchase: Purchase) -> str:
    if licenses.license_of(purchase) is None:
        return str(_("This purchase has no license key."))
    return ""


_REFUSALS: dict[str, Callable[[Purchase], str]] = {
    RESEND: _resend_refusal,
    ISSUE_LINK: _issue_refusal,
    EXTEND_LINK: _link_refusal,
    RESET_LINK: _link_refusal,
    REVOKE: _revoke_refusal,
    SUSPEND: _suspend_refusal,
    RESTORE: _restore_refusal,
    CORRECT_EMAIL: lambda purchase: _included_refusal(purchase) or _email_refusal(purchase),
    REFUND: _refund_refusal,
    RELEASE_ACTIVATION: _license_refusal,
}


def refusal(action: str, purchase: Purchase) -> str:
    """Why ``action`` does not apply to ``purchase`` now; empty when it does."""
    return _REFUSALS[action](purchase)


def link_refusal(link: DownloadLink) -> str:
    """Why a link cannot be extended or reset; empty when it can."""
    if link.revoked_at is not None:
        return str(_("This link was revoked: revoked links never work again. Issue a new one."))
    return refusal(EXTEND_LINK, link.purchase)


# The one place the desk emails a buyer ---------------------------------------------------------


def send_delivery_email(purchase: Purchase, issued: links.IssuedLink) -> OutboundEmail:
    """Email ``purchase``'s buyer their delivery email with the link just issued.

    Through the email outbox: recorded in the action's transaction, sent right after it commits
    (never while the purchase's row is locked), retried until it goes when the mail server
    fails. The link is sent with a token of its own (``issued``'s is never used). Once it is
    sent, a delivery email still waiting for a retry is cancelled: the buyer has this one.
    """
    return outbox.promise_desk_email(purchase, issued.link)


def emailed(link: DownloadLink) -> OutboundEmail | None:
    """The desk's latest email of ``link``, to tell the editor how it went."""
    emails = OutboundEmail.objects.filter(kind=OutboundEmail.Kind.DESK, link=link)
    return emails.order_by("pk").last()


# Actions ------------------------------------------------------------------------------------


def log_title(purchase: Purchase) -> str:
    """The label of the purchase's log entries: no email address in Wagtail's log."""
    return f"{purchase.product_title} · {str(purchase.public_id)[:8]}"


def _log(purchase: Purchase, action: str, user: Any, **data: Any) -> None:
    log_action(purchase, action, user=user, data=data, title=log_title(purchase))


def _lock(purchase: Purchase, action: str) -> Purchase:
    """The purchase's row, locked until the transaction ends, if ``action`` applies to it."""
    locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
    why_not = refusal(action, locked)
    if why_not:
        raise NotApplicable(why_not)
    return locked


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


def resend_delivery_email(purchase: Purchase, *, user: Any) -> links.IssuedLink:
    """Send the buyer the delivery email again, with a fresh link (the product's rules)."""
    with transaction.atomic():
        locked = _lock(purchase, RESEND)
        issued = links.issue_link(locked, reason=DownloadLink.Reason.ADMIN)
        send_delivery_email(locked, issued)
        _log(locked, RESEND, user, link=issued.link.pk, expires_at=_iso(issued.link.expires_at))
    return issued


def issue_new_link(
    purchase: Purchase,
    *,
    user: Any,
    lifetime: timedelta,
    download_limit: int | None,
    send_email: bool,
) -> links.IssuedLink:
    """A new link with the editor's lifetime and per-file limit (None: unlimited); emailed to
    the buyer, or only returned (the editor passes it on; it is not stored)."""
    with transaction.atomic():
        locked = _lock(purchase, RESEND if send_email else ISSUE_LINK)
        issued = links.issue_link(
            locked,
            reason=DownloadLink.Reason.ADMIN,
            lifetime=lifetime,
            download_limit=download_limit,
        )
        if send_email:
            send_delivery_email(locked, issued)
        _log(
            locked,
            ISSUE_LINK,
            user,
            link=issued.link.pk,
            expires_at=_iso(issued.link.expires_at),
            download_limit=issued.link.download_limit,
            emailed=send_email,
        )
    return issued


def _lock_link(link: DownloadLink) -> DownloadLink:
    locked = DownloadLink.objects.select_for_update().select_related("purchase").get(pk=link.pk)
    why_not = link_refusal(locked)
    if why_not:
        raise NotApplicable(why_not)
    return locked


def extend_link(link: DownloadLink, *, user: Any, lifetime: timedelta) -> DownloadLink:
    """Make ``link`` valid for ``lifetime`` from now (also a link that already expired)."""
    with transaction.atomic():
        locked = _lock_link(link)
        previous = locked.expires_at
        locked.expires_at = timezone.now() + lifetime
        locked.save(update_fields=["expires_at"])
        _log(
            locked.purchase,
            EXTEND_LINK,
            user,
            link=locked.pk,
            expires_at=_iso(locked.expires_at),
            previous=_iso(previous),
        )
    return locked


def reset_link_counts(link: DownloadLink, *, user: Any) -> int:
    """Set ``link``'s download counts (every file) back to zero; returns the total it had.

    A download counting on the same file at the same moment holds the counter's row lock; this
    waits for it and then resets, so a count is never lost half-way. The download log keeps
    every download.
    """
    with transaction.atomic():
        # Counters first, then the link: the order a download takes them (no deadlock).
        counters = FileDownloadCount.objects.select_for_update().filter(link_id=link.pk)
        locked_ids = list(counters.values_list("pk", flat=True))
        locked = _lock_link(link)
        had = locked.download_count
        FileDownloadCount.objects.filter(pk__in=locked_ids).update(count=0)
        DownloadLink.objects.filter(pk=locked.pk).update(download_count=F("download_count") - had)
        _log(locked.purchase, RESET_LINK, user, link=locked.pk, downloads=had)
    return had


def activation_refusal(activation: LicenseActivation) -> str:
    """Why an activation cannot be released; empty when it can."""
    if activation.released_at is not None:
        return str(_("This activation was already released."))
    return ""


def release_activation(activation: LicenseActivation, *, user: Any) -> bool:
    """Free the seat ``activation`` holds (the buyer moved machines); False if already free."""
    with transaction.atomic():
        license = activation.license
        released = licenses.release(
            license, activation.instance_id, LicenseActivation.ReleasedBy.SHOP
        )
        if released:
            _log(license.purchase, RELEASE_ACTIVATION, user, instance=activation.instance_id)
    return released


def revoke_access(purchase: Purchase, *, user: Any, reason: str, final: bool = True) -> None:
    """End the buyer's access, for good (``revoked``: every link ends) or suspended
    (``disputed``: links pause until ``restore_access``), through the state machine."""
    action = REVOKE if final else SUSPEND
    status = S.REVOKED if final else S.DISPUTED
    with transaction.atomic():
        _lock(purchase, action)
        if not fulfillment.revoke_purchase(purchase, reason=reason, status=status):
            raise NotApplicable(str(_("Nothing changed: the purchase is %s.")) % purchase.status)
        _log(purchase, action, user, status=str(status), reason=reason)


def restore_access(purchase: Purchase, *, user: Any) -> None:
    """Give a suspended purchase its access back; its links work again where not expired."""
    with transaction.atomic():
        _lock(purchase, RESTORE)
        if not fulfillment.restore_purchase(purchase):
            raise NotApplicable(str(_("Nothing changed: the purchase is %s.")) % purchase.status)
        _log(purchase, RESTORE, user, status=str(S.PAID))


def correct_email(
    purchase: Purchase, *, user: Any, email: str, revoke_links: bool, send_link: bool
) -> links.IssuedLink | None:
    """Change the buyer's address; optionally end the links sent so far (they may have gone to
    a stranger) and send a fresh link to the new address (paid purchases only)."""
    with transaction.atomic():
        locked = _lock(purchase, CORRECT_EMAIL)
        old = locked.email
        locked.email = email
        locked.save(update_fields=["email", "updated_at"])
        outbox.address_corrected(locked, old)
        # A bundle's included purchases share its buyer (the library finds them by address).
        Purchase.objects.filter(bundle=locked).update(email=email, updated_at=timezone.now())
        revoked = 0
        if revoke_links:
            revoked = DownloadLink.objects.filter(
                Q(purchase=locked) | Q(purchase__bundle=locked), revoked_at=None
            ).update(revoked_at=timezone.now())
        issued = None
        if send_link:
            why_not = _resend_refusal(locked)
            if why_not:
                raise NotApplicable(why_not)
            issued = links.issue_link(locked, reason=DownloadLink.Reason.ADMIN)
            send_delivery_email(locked, issued)
        _log(
            locked,
            CORRECT_EMAIL,
            user,
            revoked_links=revoked,
            link=issued.link.pk if issued else None,
        )
    purchase.email = email
    return issued


def grant(product: Any, *, user: Any, email: str, reason: str) -> Purchase:
    """A complimentary copy of ``product`` for ``email`` (no Stripe, no money), delivered by the
    usual delivery email, queued when the transaction commits like any paid purchase's."""
    with transaction.atomic():
        purchase = fulfillment.grant_purchase(product, email)
        _log(purchase, GRANT, user, status=str(S.PAID), reason=reason)
    return purchase


# The event inbox -------------------------------------------------------------------------------


def event_refusal(event: StripeEvent, now: datetime | None = None) -> str:
    """Why a stored Stripe event cannot be reprocessed now; empty when it can.

    An event waiting for its task (received, leased into the future) is queued or running:
    a second copy would only race the first.
    """
    now = now or timezone.now()
    waiting = event.status == StripeEvent.Status.RECEIVED
    if waiting and event.next_attempt_at is not None and event.next_attempt_at > now:
        return str(_("This event is queued or running now; reload this page in a few minutes."))
    return ""


def reprocess_event(event: StripeEvent, *, user: Any, reset_attempts: bool = False) -> None:
    """Queue a stored event again, as ``manage.py reprocess`` does: back to received, handed to
    the task cluster on commit, logged with the editor. Safe to repeat: processing re-reads the
    session from Stripe and fulfils a purchase once."""
    with transaction.atomic():
        locked = StripeEvent.objects.select_for_update().get(pk=event.pk)
        why_not = event_refusal(locked)
        if why_not:
            raise NotApplicable(why_not)
        inbox.reset(locked.pk, reset_attempts=reset_attempts)
        log_action(
            locked,
            REPROCESS_EVENT,
            user=user,
            data={"status": str(locked.status), "attempts": locked.attempts},
            title=str(locked),
        )
        pk = locked.pk
        transaction.on_commit(lambda: inbox.enqueue(pk))


# The email outbox ------------------------------------------------------------------------------


def email_refusal(email: OutboundEmail) -> str:
    """Why an email cannot be sent again from the desk now; empty when it can. An email still
    retrying is tried again on its own (its next attempt is shown)."""
    if email.status != OutboundEmail.Status.FAILED:
        return str(
            _("Only an email whose every attempt failed is sent again (this one is: %(s)s).")
        ) % {"s": email.get_status_display()}
    return ""


def send_email_again(email: OutboundEmail, *, user: Any) -> None:
    """Give a failed email a fresh set of attempts (``outbox.retry_failed``), handed to the
    task cluster on commit, logged with the editor (no address in the log)."""
    with transaction.atomic():
        locked = OutboundEmail.objects.select_for_update().get(pk=email.pk)
        why_not = email_refusal(locked)
        if why_not or not outbox.retry_failed(locked.pk):
            raise NotApplicable(why_not or email_refusal(locked))
        log_action(
            locked,
            SEND_EMAIL_AGAIN,
            user=user,
            data={"attempts": locked.attempts, "kind": str(locked.kind)},
            title=f"{locked.get_kind_display()} #{locked.pk}",
        )


# How the log shows them ----------------------------------------------------------------------


def _when(value: Any) -> str:
    moment = parse_datetime(value) if isinstance(value, str) else None
    if moment is None:
        return "?"
    return formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT")


def _limit(value: Any) -> str:
    if value is None:
        return str(_("unlimited downloads"))
    return ngettext("%(n)s download per file", "%(n)s downloads per file", value) % {"n": value}


class _DataFormatter(LogFormatter):
    """Formats ``message`` with the entry's data (dates and limits made readable)."""

    def values(self, data: dict[str, Any]) -> dict[str, Any]:
        return {
            **data,
            "expires": _when(data.get("expires_at")),
            "previous": _when(data.get("previous")),
            "limit": _limit(data.get("download_limit")),
        }

    def format_message(self, log_entry: Any) -> str:
        try:
            return str(self.message) % self.values(log_entry.data or {})
        except (KeyError, TypeError, ValueError):
            return str(self.label)

    def format_comment(self, log_entry: Any) -> str:
        return str((log_entry.data or {}).get("reason", ""))


class _IssueFormatter(_DataFormatter):
    label = _("Shop desk: issue a link")
    message = _("New link #%(link)s issued: valid until %(expires)s, %(limit)s")

    def format_message(self, log_entry: Any) -> str:
        text = super().format_message(log_entry)
        if (log_entry.data or {}).get("emailed"):
            return str(_("%(text)s; emailed to the buyer")) % {"text": text}
        return str(_("%(text)s; shown to the editor, not emailed")) % {"text": text}


class _EmailFormatter(_DataFormatter):
    label = _("Shop desk: correct the email address")
    message = _("Buyer's email address corrected")

    def format_message(self, log_entry: Any) -> str:
        data = log_entry.data or {}
        parts = [str(self.message)]
        if data.get("revoked_links"):
            parts.append(
                ngettext(
                    "%(n)s earlier link revoked",
                    "%(n)s earlier links revoked",
                    data["revoked_links"],
                )
                % {"n": data["revoked_links"]}
            )
        if data.get("link"):
            parts.append(str(_("new link #%(link)s emailed")) % {"link": data["link"]})
        return "; ".join(parts)


def _formatter(label: Any, message: Any) -> type[_DataFormatter]:
    return type("DeskFormatter", (_DataFormatter,), {"label": label, "message": message})


#: Action → formatter class, registered by ``register_log_actions``.
FORMATTERS: dict[str, type[LogFormatter]] = {
    RESEND: _formatter(
        _("Shop desk: resend the delivery email"),
        _("Delivery email sent again with new link #%(link)s (valid until %(expires)s)"),
    ),
    ISSUE_LINK: _IssueFormatter,
    EXTEND_LINK: _formatter(
        _("Shop desk: extend a link"),
        _("Link #%(link)s extended: valid until %(expires)s (was %(previous)s)"),
    ),
    RESET_LINK: _formatter(
        _("Shop desk: reset a link's counts"),
        _("Download counts of link #%(link)s reset to zero (it had counted %(downloads)s)"),
    ),
    REVOKE: _formatter(_("Shop desk: revoke access"), _("Access revoked for good")),
    SUSPEND: _formatter(_("Shop desk: suspend access"), _("Access suspended")),
    RESTORE: _formatter(_("Shop desk: restore access"), _("Access restored")),
    CORRECT_EMAIL: _EmailFormatter,
    GRANT: _formatter(
        _("Shop desk: grant a complimentary copy"),
        _("Complimentary copy granted (no payment)"),
    ),
    REPROCESS_EVENT: _formatter(
        _("Shop desk: reprocess a Stripe event"),
        _("Queued again (it was %(status)s after %(attempts)s attempts)"),
    ),
    RELEASE_ACTIVATION: _formatter(
        _("Shop desk: release a license activation"),
        _("License key activation on %(instance)s released"),
    ),
    SEND_EMAIL_AGAIN: _formatter(
        _("Shop desk: send an email again"),
        _("Email queued again (it had failed after %(attempts)s attempts)"),
    ),
}


def register_log_actions(actions: Any) -> None:
    """For Wagtail's ``register_log_actions`` hook."""
    for action, formatter in FORMATTERS.items():
        actions.register_action(action)(formatter)
