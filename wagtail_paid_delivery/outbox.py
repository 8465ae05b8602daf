"""The email outbox: every email the app promises is a row, sent at least once, retried by us.

A promise (``OutboundEmail``) records *what* to send: its kind, the purchase(s) it is about, the
recipient, and a Message-ID fixed when it is made; never a rendered body or a raw token. Each
attempt (:func:`attempt`):

1. claims the row with a conditional UPDATE that counts the attempt and leases the row
   (``next_attempt_at`` moves past the longest a task may run), so two workers, or a task and
   the sweep, never send one row at once;
2. issues the message's download links in their own transaction, and renders the message;
3. sends it, outside any transaction and with no row lock held (a slow mail server blocks
   nobody: not the purchase, not the webhook, not the admin);
4. records the outcome: ``sent``; or, when sending failed, the error and the next attempt time
   (exponential backoff), after revoking the links it had issued. After ``MAX_EMAIL_ATTEMPTS``
   the row is ``failed``, logged at ERROR, and stays for the shop owner to see.

Retrying is ours, not the broker's: with ``ack_failures`` (which check W003 asks for) django-q2
drops a failed task, and its Redis broker never re-delivers one. :func:`sweep`, scheduled every
minute, enqueues the rows whose next attempt is due, and rows whose first task was lost (still
untried ``STUCK_AFTER`` after they were promised).

At least once: a worker that dies after the mail server took the message but before the row
says ``sent`` sends it again once its lease runs out, with the same Message-ID, so mail clients
show it once. A failed attempt never sent anything (the server refused it), so its retry does
not send twice.

Kinds: ``KINDS`` says, for each kind, which links its message carries and how it is rendered:
the delivery email and a resend issue new links at each attempt; the shop desk's email sends the
link an editor issued, with a new token at each attempt (``links.rekey_link``); the library's
sign-in email carries a new one-time sign-in link at each attempt (``library.issue_sign_in``); a
new sale notice (``sale_notices``) carries no link and goes only to an address still told about
sales; the failed-payment notice carries no link, only the way back to the product page; an
update email (``updates``) carries a new link at each attempt and goes only to a buyer who
still owns the product and has not unsubscribed. A new
kind is an ``OutboundEmail.Kind`` choice, one entry in ``KINDS`` and a function that records the
promise. See docs/architecture.md, "Emails".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import make_msgid, parseaddr
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.utils import DNS_NAME
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import delivery, languages, library, links, retry, sale_notices, updates
from .conf import app_settings
from .models import DownloadLink, OutboundEmail, Purchase, UpdateNotice, UpdateRecipient

logger = logging.getLogger(__name__)

#: The django-q2 task that makes one attempt (queued tasks store this path).
TASK = "wagtail_paid_delivery.tasks.send_email"
TASK_GROUP = "wagtail_paid_delivery.emails"

#: A promised email still untried this long after it was made lost its task (cluster down, the
#: broker lost it, the process died before enqueueing): the sweep enqueues it.
STUCK_AFTER = timedelta(minutes=5)
#: Emails the sweep enqueues per run; the rest wait for the next minute.
SWEEP_BATCH = 200
#: Purchases listed in one resend email at most (the most recent first).
RESEND_MAX_PURCHASES = 50

Kind = OutboundEmail.Kind
Status = OutboundEmail.Status


class NothingToSend(Exception):
    """The promise no longer stands: its purchase is not paid any more, or no address is known.

    The email is cancelled, not retried.
    """


# Kinds -----------------------------------------------------------------------------------------


def _revoke(issued: list[links.IssuedLink]) -> None:
    for one in issued:
        links.revoke_link(one.link)


def _purchase_language(email: OutboundEmail, issued: list[Any]) -> str | None:
    return email.purchase.language if email.purchase is not None else None


def _links_language(email: OutboundEmail, issued: list[Any]) -> str | None:
    # A resend lists several purchases: the newest one's buyer speaks for the address.
    return issued[0].link.purchase.language if issued else None


def _address_language(email: OutboundEmail, issued: list[Any]) -> str | None:
    newest = library.address_purchases(email.to).first()
    return newest.language if newest is not None else None


def _shop_language(email: OutboundEmail, issued: list[Any]) -> str | None:
    return None  # the notice is for the shop: the site's own language


@dataclass(frozen=True)
class EmailKind:
    """How one kind of email is made at each attempt."""

    #: Issue the links the message carries (download links, or a library sign-in link), in one
    #: transaction; raise NothingToSend.
    issue: Callable[[OutboundEmail], list[Any]]
    #: The message, from the promise and the links just issued.
    render: Callable[[OutboundEmail, list[Any]], EmailMultiAlternatives]
    #: Called once the email is sent (with the time), e.g. to mark the purchase.
    on_sent: Callable[[OutboundEmail, datetime], None] | None = None
    #: What becomes of a failed attempt's links: revoked, so no copy a failed send left
    #: anywhere (a mail server's queue, a log) opens anything.
    discard: Callable[[list[Any]], None] = _revoke
    #: The language it is written in: its buyer's (``Purchase.language``); None: the site's.
    language: Callable[[OutboundEmail, list[Any]], str | None] = _purchase_language


def _issue_delivery(email: OutboundEmail) -> list[links.IssuedLink]:
    purchase = email.purchase
    if purchase is None:
        raise NothingToSend("the purchase no longer exists")
    if purchase.status != Purchase.Status.PAID:
        raise NothingToSend(f"the purchase is {purchase.status}")
    # A bundle's email is the one email of every product it included: a link per product
    # (each opens that product's files only), its own first when it has files of its own.
    paid_included = purchase.included.filter(status=Purchase.Status.PAID)
    # Most purchases are no bundle: one narrow query says so.
    included = []
    if paid_included.exists():
        included = list(paid_included.select_related("product").order_by("pk"))
    page = purchase.product_page
    own = not included or page is None or bool(page.product_files)
    purchases = ([purchase] if own else []) + included
    # One transaction for a bundle's links; a single link is one INSERT, atomic already.
    with transaction.atomic() if len(purchases) > 1 else contextlib.nullcontext():
        return [links.issue_link(one, reason=DownloadLink.Reason.WEBHOOK) for one in purchases]


def _render_delivery(
    email: OutboundEmail, issued: list[links.IssuedLink]
) -> EmailMultiAlternatives:
    # The delivery email (its purchase, perhaps a bundle) or the desk's (one purchase's link).
    purchase = email.purchase or issued[0].link.purchase
    own = [one for one in issued if one.link.purchase_id == purchase.pk]
    included = [one for one in issued if one.link.purchase_id != purchase.pk]
    return delivery.build_delivery_email(
        purchase, own[0] if own else None, included=included, to=email.to
    )


def _delivery_sent(email: OutboundEmail, now: datetime) -> None:
    if email.purchase_id is not None:
        Purchase.objects.filter(pk=email.purchase_id, delivery_email_sent_at=None).update(
            delivery_email_sent_at=now, updated_at=now
        )


def _issue_desk(email: OutboundEmail) -> list[links.IssuedLink]:
    # The editor's link, with a token of its own for this attempt.
    purchase, link = email.purchase, email.link
    if purchase is None or link is None:
        raise NothingToSend("the purchase or its link no longer exists")
    if purchase.status != Purchase.Status.PAID:
        raise NothingToSend(f"the purchase is {purchase.status}")
    with transaction.atomic():
        issued = links.rekey_link(link)
    if issued is None:
        raise NothingToSend(f"link #{link.pk} was revoked")
    return [issued]


def _desk_sent(email: OutboundEmail, now: datetime) -> None:
    if email.purchase_id is None:
        return
    # The buyer has their delivery email now: one still waiting for a retry would be a second.
    OutboundEmail.objects.filter(
        kind=Kind.DELIVERY, purchase_id=email.purchase_id, status=Status.PENDING
    ).update(status=Status.CANCELLED, last_error=f"sent from the shop desk instead (#{email.pk})")
    _delivery_sent(email, now)


def _forget_tokens(issued: list[links.IssuedLink]) -> None:
    # The link is the editor's and stays; only the token a failed attempt carried must die.
    for one in issued:
        links.rekey_link(one.link)


def _issue_resend(email: OutboundEmail) -> list[links.IssuedLink]:
    # Purchases refunded or disputed since the request are left out; none left: nothing to send.
    paid = list(
        email.purchases.filter(status=Purchase.Status.PAID)
        .select_related("product")
        .order_by("-paid_at", "-pk")
    )
    if not paid:
        raise NothingToSend("none of its purchases is paid any more")
    with transaction.atomic():
        return [links.issue_link(p, reason=DownloadLink.Reason.RESEND) for p in paid]


def _render_resend(email: OutboundEmail, issued: list[links.IssuedLink]) -> EmailMultiAlternatives:
    return delivery.build_links_email(email.to, issued)


def _issue_sign_in(email: OutboundEmail) -> list[library.IssuedSignIn]:
    # A new one-time link at each attempt, for the address on record; the newest purchase's
    # site is where the link leads.
    newest = library.address_purchases(email.to).first()
    if newest is None:
        raise NothingToSend("the address has no purchases any more")
    with transaction.atomic():
        return [library.issue_sign_in(email.to, purchase=newest)]


def _render_sign_in(
    email: OutboundEmail, issued: list[library.IssuedSignIn]
) -> EmailMultiAlternatives:
    return delivery.build_sign_in_email(email.to, issued[0])


def _issue_new_sale(email: OutboundEmail) -> list[links.IssuedLink]:
    # No links: the notice is for the shop. It goes only to an address still told about sales
    # (a user who lost the permission or opted out since the sale is not).
    if email.purchase is None:
        raise NothingToSend("the purchase no longer exists")
    if not sale_notices.is_recipient(email.to):
        raise NothingToSend("the address is no longer told about new sales")
    return []


def _render_new_sale(
    email: OutboundEmail, issued: list[links.IssuedLink]
) -> EmailMultiAlternatives:
    if email.purchase is None:
        raise NothingToSend("the purchase no longer exists")
    return sale_notices.build_new_sale_email(email.purchase, email.to)


def _issue_payment_failed(email: OutboundEmail) -> list[links.IssuedLink]:
    # No links: the notice says the payment failed, so it is only true while the purchase is
    # failed (Stripe may yet say otherwise, e.g. a late success, and the delivery email follows).
    purchase = email.purchase
    if purchase is None:
        raise NothingToSend("the purchase no longer exists")
    if purchase.status != Purchase.Status.FAILED:
        raise NothingToSend(f"the purchase is {purchase.status}")
    return []


def _render_payment_failed(
    email: OutboundEmail, issued: list[links.IssuedLink]
) -> EmailMultiAlternatives:
    assert email.purchase is not None  # noqa: S101 (checked by _issue_payment_failed)
    return delivery.build_payment_failed_email(email.purchase, to=email.to)


def _issue_update(email: OutboundEmail) -> list[links.IssuedLink]:
    # A fresh link at each attempt, while the buyer still owns the product and still wants
    # update emails (they may have unsubscribed since the batch promised this one).
    purchase = email.purchase
    if purchase is None:
        raise NothingToSend("the purchase no longer exists")
    if purchase.status not in updates.TOLD_STATUSES:
        raise NothingToSend(f"the purchase is {purchase.status}")
    if updates.is_unsubscribed(email.to):
        raise NothingToSend("the buyer unsubscribed from update emails")
    with transaction.atomic():
        return [links.issue_link(purchase, reason=DownloadLink.Reason.UPDATE)]


def _render_update(email: OutboundEmail, issued: list[links.IssuedLink]) -> EmailMultiAlternatives:
    recipient = UpdateRecipient.objects.select_related("notice").get(email=email)
    purchase = issued[0].link.purchase
    return updates.build_update_email(
        recipient.notice,
        purchase,
        issued[0],
        to=email.to,
        unsubscribe=updates.unsubscribe_url(email.to, purchase=purchase),
    )


#: Each kind of email: which links it carries, how it is rendered, what its sending marks.
KINDS: dict[str, EmailKind] = {
    Kind.DELIVERY: EmailKind(_issue_delivery, _render_delivery, _delivery_sent),
    Kind.RESEND: EmailKind(_issue_resend, _render_resend, language=_links_language),
    Kind.DESK: EmailKind(_issue_desk, _render_delivery, _desk_sent, _forget_tokens),
    Kind.LIBRARY_SIGN_IN: EmailKind(
        _issue_sign_in,
        _render_sign_in,
        discard=library.discard_sign_ins,
        language=_address_language,
    ),
    Kind.NEW_SALE: EmailKind(_issue_new_sale, _render_new_sale, language=_shop_language),
    Kind.PAYMENT_FAILED: EmailKind(_issue_payment_failed, _render_payment_failed),
    Kind.UPDATE: EmailKind(_issue_update, _render_update),
}


# Promises --------------------------------------------------------------------------------------


def new_message_id() -> str:
    """A Message-ID for a new email, on the domain of ``DEFAULT_FROM_EMAIL`` (else this host's)."""
    address = parseaddr(str(settings.DEFAULT_FROM_EMAIL))[1]
    domain = address.rpartition("@")[2] or str(DNS_NAME)
    return make_msgid(domain=domain[:200])


def promise(
    kind: str,
    *,
    to: str,
    purchase: Purchase | None = None,
    purchases: list[Purchase] | None = None,
    link: DownloadLink | None = None,
    key: str | None = None,
) -> tuple[OutboundEmail, bool]:
    """Record an email to send; returns it and whether it is new.

    Promised twice (the same kind for the same ``purchase``, or the same request ``key``), the
    first promise is returned and nothing new is made: the unique constraints decide, so two
    callers at once get one row. Inside a transaction, the promise commits (or not) with it.
    """
    try:
        with transaction.atomic():
            email = OutboundEmail.objects.create(
                kind=kind,
                to=to or "",
                purchase=purchase,
                link=link,
                idempotency_key=key,
                message_id=new_message_id(),
            )
            if purchases:
                email.purchases.set(purchases)
    except IntegrityError:
        existing = _promised(kind, purchase, key)
        if existing is None:
            raise
        return existing, False
    return email, True


def _promised(kind: str, purchase: Purchase | None, key: str | None) -> OutboundEmail | None:
    if key:
        return OutboundEmail.objects.filter(idempotency_key=key).first()
    if purchase is not None:
        return OutboundEmail.objects.filter(kind=kind, purchase=purchase).first()
    return None


def promise_delivery(purchase: Purchase) -> OutboundEmail:
    """The delivery email of a paid purchase, promised once.

    ``fulfillment`` calls this in the transaction that marks the purchase paid, so a paid
    purchase always has its email recorded, whatever becomes of the task that sends it.
    """
    email, _ = promise(Kind.DELIVERY, to=purchase.email, purchase=purchase)
    return email


def promise_sale_notices(purchase: Purchase) -> list[OutboundEmail]:
    """The new sale notices of a purchase just paid: one per recipient (``sale_notices``), each
    attempted once the caller's transaction commits and retried like every email.

    ``fulfillment`` calls this with :func:`promise_delivery`, in the transaction that marks the
    purchase paid, which happens once per purchase; the key (purchase and address) keeps a
    second promise from making a second email anyway. A grant is not a sale: no notice.
    """
    if not sale_notices.is_sale(purchase):
        return []
    promised = []
    for address in sale_notices.recipients(cached=True):
        digest = hashlib.sha256(address.lower().encode()).hexdigest()[:32]
        key = f"new_sale:{purchase.pk}:{digest}"
        email, new = promise(Kind.NEW_SALE, to=address, purchase=purchase, key=key)
        if new:
            promised.append(email)
            transaction.on_commit(partial(enqueue, email.pk))
    return promised


def promise_update(notice: UpdateNotice, purchase: Purchase, digest: str) -> UpdateRecipient | None:
    """One buyer's update email for ``notice`` (``update_runs``): the recipient row and the
    email's promise in one savepoint, attempted once the caller's transaction commits. None
    when the buyer already has theirs (the unique constraints: per notice and address, per
    notice and purchase), so a batch run twice emails nobody twice."""
    try:
        with transaction.atomic():
            recipient = UpdateRecipient.objects.create(
                notice=notice, purchase=purchase, address_digest=digest
            )
            email, _ = promise(
                Kind.UPDATE,
                to=purchase.email,
                purchase=purchase,
                key=f"update:{notice.pk}:{purchase.pk}",
            )
            recipient.email = email
            recipient.save(update_fields=["email"])
    except IntegrityError:
        return None
    transaction.on_commit(partial(enqueue, email.pk))
    return recipient


def promise_payment_failed(purchase: Purchase) -> OutboundEmail:
    """The notice that a purchase's asynchronous payment failed, promised once per purchase
    (a unique constraint), and handed to the task cluster once the caller's transaction
    commits. ``fulfillment`` calls it when a pending purchase fails; the sweep retries it."""
    email, new = promise(Kind.PAYMENT_FAILED, to=purchase.email, purchase=purchase)
    if new:
        transaction.on_commit(lambda: enqueue(email.pk))
    return email


def deliver_purchase(purchase_pk: int, product: Any = None) -> str:
    """Send the delivery email of a paid purchase, once; returns the outcome.

    The ``purchase_paid`` task. The email is promised if it was not yet (``purchase_paid``
    told by other code than ``fulfillment``), then attempted. A purchase told paid twice has one
    email: the second run finds it sent (``already_sent``) or being sent (``waiting``).
    ``product``: the purchase's specific product page, when the caller has just read it (the
    paying task): the email renders from it instead of reading it again.
    """
    # Usually the promise is there, waiting: claimed by its purchase, without looking it up.
    claimed = _claim(Q(kind=Kind.DELIVERY, purchase_id=purchase_pk), product=product)
    if claimed is not None:
        return _attempt(claimed)
    email = OutboundEmail.objects.filter(kind=Kind.DELIVERY, purchase_id=purchase_pk).first()
    if email is not None:
        return _why_not(email.status)  # sent, or another worker has it, or not due yet
    purchase = Purchase.objects.filter(pk=purchase_pk).first()
    if purchase is None:
        logger.warning("Delivery email: purchase %s no longer exists", purchase_pk)
        return "missing"
    if purchase.delivery_email_sent_at is not None:
        return "already_sent"  # its record may be gone (RETENTION["emails"])
    if purchase.bundle_id is not None:
        return "in_bundle_email"  # its links travel in its bundle's delivery email
    if purchase.status != Purchase.Status.PAID:
        return f"not_paid ({purchase.status})"
    return attempt(promise_delivery(purchase).pk)


def promise_desk_email(purchase: Purchase, link: DownloadLink) -> OutboundEmail:
    """The delivery email of ``purchase`` with ``link`` (an editor just issued it), sent as soon
    as the caller's transaction commits (:func:`attempt_on_commit`), never while it holds the
    purchase's row lock; retried like every email."""
    email, _ = promise(Kind.DESK, to=purchase.email, purchase=purchase, link=link)
    attempt_on_commit(email.pk)
    return email


def resend_links(address: str, product_id: int | None = None, request_id: str = "") -> str:
    """Email fresh links (reason RESEND) for the paid purchases of ``address``; returns the
    outcome.

    One message lists every paid purchase of the address (or only those of ``product_id``),
    sent to the address on record (the buyer's own spelling, not the one typed into the form).
    An address with none gets nothing, and nothing is recorded. ``request_id`` (the view makes
    one per accepted request) makes a task run twice by the broker one email.
    """
    address = (address or "").strip()
    if not address:
        return "no_email"
    purchases = Purchase.objects.filter(email__iexact=address, status=Purchase.Status.PAID)
    if product_id is not None:
        # A bundle's page asks for its products too: they are what it delivered.
        purchases = purchases.filter(Q(product_id=product_id) | Q(bundle__product_id=product_id))
    found = list(purchases.order_by("-paid_at", "-pk")[:RESEND_MAX_PURCHASES])
    if not found:
        return "nothing"
    key = f"resend:{request_id}"[:64] if request_id else None
    email, _ = promise(Kind.RESEND, to=found[0].email, purchases=found, key=key)
    outcome = attempt(email.pk)
    return f"sent {len(found)}" if outcome == "sent" else outcome


def send_library_sign_in(address: str, request_id: str = "") -> str:
    """Email a one-time library sign-in link to ``address`` if it ever bought; the outcome.

    Sent to the address on record (the buyer's spelling). An address that never bought gets
    nothing, and nothing is recorded: the library view asks for this for every address it
    accepts, so its answer says nothing either way. ``request_id`` makes a task the broker
    runs twice one email.
    """
    address = (address or "").strip()
    if not address:
        return "no_email"
    listed = list(library.address_purchases(address)[:RESEND_MAX_PURCHASES])
    if not listed:
        return "nothing"
    key = f"library:{request_id}"[:64] if request_id else None
    # The purchases it opens are listed on it, so each one's timeline in the desk shows it.
    email, _ = promise(Kind.LIBRARY_SIGN_IN, to=listed[0].email, purchases=listed, key=key)
    return attempt(email.pk)


# Attempts --------------------------------------------------------------------------------------


def claim(email_pk: int, token: str | None = None) -> OutboundEmail | None:
    """Take a pending email for one attempt, or None when it is not ours to send now.

    A conditional UPDATE (race-safe on every database): the email must be pending and either
    unleased, due, leased to us (the sweep passes the lease it wrote as ``token``), or never
    attempted (then a lease can only be the sweep's, taken while the task waited in a long
    queue: the task that arrives first sends it). The claim counts the attempt and leases the
    row, and it commits before anything is sent.
    """
    return _claim(Q(pk=email_pk), token)


def _claim(which: Q, token: str | None = None, product: Any = None) -> OutboundEmail | None:
    """:func:`claim` of the email ``which`` names (``product``: see :func:`deliver_purchase`)."""
    now = timezone.now()
    free = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now) | Q(attempts=0)
    if token:
        with contextlib.suppress(ValueError):
            free |= Q(next_attempt_at=datetime.fromisoformat(token))
    claimed = (
        OutboundEmail.objects.filter(which, status=Status.PENDING)
        .filter(free)
        .update(
            attempts=F("attempts") + 1, next_attempt_at=now + retry.lease(), last_attempt_at=now
        )
    )
    if not claimed:
        return None
    # The purchase (its status now) and its license key (the receipt shows it) in one query.
    related = ["purchase", "purchase__license_key"]
    email = (
        OutboundEmail.objects.select_related(*related, *([] if product else ["purchase__product"]))
        .filter(which)
        .get()
    )
    purchase = email.purchase
    if product is not None and purchase is not None and purchase.product_id == product.pk:
        purchase.product = product
    return email


def attempt(email_pk: int, token: str | None = None) -> str:
    """Try to send a promised email once; returns the outcome (also recorded on the row).

    Never raises for a failed send: the failure is recorded and the sweep tries again, which
    is how it works with every broker. Call it outside a transaction (tasks are): the claim
    must commit before the mail server is called.
    """
    email = claim(email_pk, token)
    if email is None:
        return _why_not_claimed(email_pk)
    return _attempt(email)


def _attempt(email: OutboundEmail) -> str:
    """One attempt at a claimed email (:func:`attempt`)."""
    issued: list[Any] = []
    try:
        kind = KINDS[email.kind]
        if not email.to:
            raise NothingToSend("no email address")
        issued = kind.issue(email)
        with languages.speaking(kind.language(email, issued)):
            message = kind.render(email, issued)
        message.extra_headers["Message-ID"] = email.message_id
        message.send()
    except NothingToSend as exc:
        return _cancel(email, str(exc))
    except Exception as exc:
        if issued:
            # The buyer never got these links' tokens: they must not work for whoever reads a
            # copy the failed send may have left.
            KINDS[email.kind].discard(issued)
        return _record_failure(email, exc)
    return _record_sent(email, kind)


def _why_not_claimed(email_pk: int) -> str:
    status = OutboundEmail.objects.filter(pk=email_pk).values_list("status", flat=True).first()
    if status is None:
        logger.warning("Email %s no longer exists", email_pk)
        return "missing"
    return _why_not(status)


def _why_not(status: str) -> str:
    if status == Status.SENT:
        return "already_sent"
    # Pending: another worker is sending it, or it waits for its next attempt.
    return "waiting" if status == Status.PENDING else f"skipped ({status})"


def _mine(email: OutboundEmail) -> QuerySet[OutboundEmail]:
    """The row, as long as the lease this attempt took is still ours."""
    return OutboundEmail.objects.filter(
        pk=email.pk, status=Status.PENDING, next_attempt_at=email.next_attempt_at
    )


def _record_sent(email: OutboundEmail, kind: EmailKind) -> str:
    now = timezone.now()
    # Whoever holds the lease now, the mail is out: record it (a worker that took over after
    # our lease ran out finds it sent, or sends a copy with the same Message-ID).
    OutboundEmail.objects.filter(pk=email.pk).exclude(status=Status.SENT).update(
        status=Status.SENT, sent_at=now, next_attempt_at=None, last_error=""
    )
    if kind.on_sent is not None:
        kind.on_sent(email, now)
    logger.info("Email %s (%s) sent, attempt %s", email.pk, email.kind, email.attempts)
    return "sent"


def _cancel(email: OutboundEmail, why: str) -> str:
    _mine(email).update(status=Status.CANCELLED, last_error=why, next_attempt_at=None)
    logger.warning("Email %s (%s) not sent: %s", email.pk, email.kind, why)
    return f"cancelled: {why}"


def _record_failure(email: OutboundEmail, exc: Exception) -> str:
    """Mark a claimed email for another attempt with backoff, or failed after the last one."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    attempts = email.attempts
    max_attempts = int(app_settings.MAX_EMAIL_ATTEMPTS)
    if attempts >= max_attempts:
        _mine(email).update(status=Status.FAILED, last_error=error, next_attempt_at=None)
        logger.error(
            "Email %s (%s) FAILED for good after %s attempts; the buyer did not get it: %s",
            email.pk,
            email.kind,
            attempts,
            error,
        )
        return f"failed for good after {attempts} attempts"
    next_attempt = timezone.now() + retry.backoff(
        attempts,
        first=app_settings.email_retry_delay,
        longest=app_settings.email_retry_max_delay,
    )
    _mine(email).update(last_error=error, next_attempt_at=next_attempt)
    logger.warning(
        "Email %s (%s) failed (attempt %s of %s), retrying at %s: %s",
        email.pk,
        email.kind,
        attempts,
        max_attempts,
        next_attempt.isoformat(timespec="seconds"),
        error,
    )
    return f"failed (attempt {attempts} of {max_attempts})"


def address_corrected(purchase: Purchase, old: str) -> None:
    """The buyer's address was corrected from ``old``: emails about the purchase still waiting
    go to the new address, not the old one (it may be a stranger's); a resend to the old address
    that lists the purchase is cancelled (it lists that address's other purchases too)."""
    waiting = OutboundEmail.objects.filter(status=Status.PENDING, to__iexact=old)
    # A new sale notice goes to the shop, not the buyer, even when the buyer was the shop.
    waiting.filter(purchase=purchase).exclude(kind=Kind.NEW_SALE).update(to=purchase.email)
    why = "the buyer's address was corrected"
    waiting.filter(kind=Kind.RESEND, purchases=purchase).update(
        status=Status.CANCELLED, last_error=why, next_attempt_at=None
    )


def attempt_on_commit(email_pk: int) -> None:
    """Attempt the email right after the current transaction commits, in this process (the
    shop desk tells its editor at once whether it went); the sweep retries a failure."""
    transaction.on_commit(lambda: attempt(email_pk))


def retry_failed(email_pk: int) -> bool:
    """Give a failed email a fresh set of attempts, starting now (for the shop owner, once the
    cause is fixed). Returns whether it was failed."""
    changed = OutboundEmail.objects.filter(pk=email_pk, status=Status.FAILED).update(
        status=Status.PENDING, attempts=0, next_attempt_at=None
    )
    if changed:
        transaction.on_commit(lambda: enqueue(email_pk))
    return bool(changed)


# The sweep -------------------------------------------------------------------------------------


def enqueue(email_pk: int, *, token: str | None = None) -> None:
    """Hand an email's attempt to django-q2. A failure to enqueue is logged, not raised: the
    email is recorded, and the sweep enqueues it again."""
    from django_q.tasks import async_task

    args: tuple[object, ...] = (email_pk, token) if token else (email_pk,)
    try:
        async_task(TASK, *args, group=TASK_GROUP, broker=retry.broker())
    except Exception:
        logger.exception("Could not enqueue email %s; the sweep will try again", email_pk)


def due_emails(now: datetime | None = None) -> QuerySet[OutboundEmail]:
    """Pending emails the sweep should start: those whose next attempt (or lease) is due, and
    those never tried ``STUCK_AFTER`` after they were promised (their task was lost)."""
    now = now or timezone.now()
    retry_due = Q(next_attempt_at__lte=now)
    lost = Q(next_attempt_at__isnull=True, created_at__lte=now - STUCK_AFTER)
    return OutboundEmail.objects.filter(status=Status.PENDING).filter(retry_due | lost)


def sweep() -> str:
    """Enqueue the emails that are due (oldest promise first); returns a summary for the log.

    Each is first leased with a conditional UPDATE, so two sweeps at once enqueue it once; the
    task is handed the lease as its token.
    """
    now = timezone.now()
    queued = 0
    due = due_emails(now).order_by("created_at").values_list("pk", "next_attempt_at")
    for pk, old in due[:SWEEP_BATCH]:
        until = now + retry.lease()
        leased = OutboundEmail.objects.filter(pk=pk, status=Status.PENDING, next_attempt_at=old)
        if not leased.update(next_attempt_at=until):
            continue  # another sweep (or a task) got there first
        enqueue(pk, token=until.isoformat())
        queued += 1
    failed = OutboundEmail.objects.filter(status=Status.FAILED).count()
    return f"queued {queued}; failed for good {failed}"


# Delivery in the paying task -------------------------------------------------------------------

#: The purchases paid while a task that sends their delivery emails itself runs (see
#: :func:`sending_deliveries_here`), each with the product page its payment read (or None);
#: None outside such a task.
_PAID_HERE: ContextVar[dict[int, Any] | None] = ContextVar("wpd_paid_here", default=None)


@contextlib.contextmanager
def sending_deliveries_here() -> Iterator[dict[int, Any]]:
    """Collect the purchases paid (and committed) inside the block, for the caller to send their
    delivery emails itself once it is done (:func:`send_deliveries`), instead of one more task
    each waiting behind the queue (``inbox.process`` does this).

    The email was promised with the payment, so nothing is lost if the caller dies before it
    sends: the sweep sends it. A block left by an exception hands what it collected to the
    email task instead, so an email never waits for the sweep because of an unrelated error.
    """
    paid: dict[int, Any] = {}
    reset_token = _PAID_HERE.set(paid)
    try:
        yield paid
    except BaseException:
        _enqueue_deliveries(list(paid))
        raise
    finally:
        _PAID_HERE.reset(reset_token)


def _enqueue_deliveries(purchase_pks: list[int]) -> None:
    try:
        emails = OutboundEmail.objects.filter(kind=Kind.DELIVERY, purchase_id__in=purchase_pks)
        for email_pk in emails.values_list("pk", flat=True):
            enqueue(email_pk)
    except Exception:
        # The caller's own error is the one to raise; the sweep sends these.
        logger.exception("Could not enqueue the delivery emails of purchases %s", purchase_pks)


def delivery_sent_by_caller(purchase: Purchase) -> bool:
    """Whether the running task sends ``purchase``'s delivery email itself (inside
    :func:`sending_deliveries_here`): the ``purchase_paid`` receiver then queues no task for
    it. The purchase is collected when the current transaction commits (not if it rolls back),
    with the product page its payment loaded, which the email then reuses."""
    paid = _PAID_HERE.get()
    if paid is None:
        return False
    product = purchase.product if Purchase.product.is_cached(purchase) else None
    transaction.on_commit(partial(paid.__setitem__, purchase.pk, product))
    return True


def send_deliveries(
    purchase_pks: Iterable[int], products: Mapping[int, Any] | None = None
) -> list[str]:
    """Attempt the delivery email of each purchase, once (:func:`deliver_purchase`: claimed, so
    a task or the sweep that also has it sends nothing twice); returns the outcomes.
    ``products``: purchase pk → its product page just read (what
    :func:`sending_deliveries_here` collects)."""
    products = products or {}
    return [deliver_purchase(pk, products.get(pk)) for pk in dict.fromkeys(purchase_pks)]
