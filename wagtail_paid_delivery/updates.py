"""Telling past buyers about a product's new release: the notice, its batches, the email.

An editor ticks "email past buyers when this is published" on a product page and writes a
subject and message; the choice lives in the revision, so it applies when that revision is
published, now or at its scheduled go-live. Wagtail's ``page_published`` (sent for scheduled
publishes too) reaches :func:`notice_for_publish`, which records one ``UpdateNotice`` per
release (:func:`release_key`) and queues its first batch.

The run itself (batches at ``UPDATE_EMAILS_PER_MINUTE``, resumable, nobody emailed twice) is
``update_runs``; the outbox sends and retries each email (kind ``update``).

Who is told: paid purchases of the product, grants included (a complimentary copy is owned
like a bought one), one email per address (its newest purchase); refunded, revoked, disputed
and unpaid purchases are not, nor addresses that unsubscribed (:func:`is_unsubscribed`, asked
again when each email is sent).

Unsubscribing: every update email carries ``List-Unsubscribe`` (an https URL with a signed,
expiring token naming the address's digest, never the address) and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058). The URL's GET shows a button;
only a POST unsubscribes, so a mail scanner that opens links changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.translation import gettext as _

from . import delivery, links, versions
from .addresses import address_digest
from .conf import app_settings
from .models import (
    OutboundEmail,
    ProductPageMixin,
    Purchase,
    UpdateNotice,
    UpdateOptOut,
)

logger = logging.getLogger(__name__)

#: The django-q2 task that queues a notice's next batch (``update_runs.send_batch``).
BATCH_TASK = "wagtail_paid_delivery.tasks.send_update_batch"
UNSUBSCRIBE_SALT = "wagtail_paid_delivery.updates.unsubscribe"
#: A purchase that owns the product now: told about its updates.
TOLD_STATUSES = (Purchase.Status.PAID,)


class InvalidUnsubscribe(Exception):
    """The unsubscribe token was not made by this site (forged, cut, altered)."""


class ExpiredUnsubscribe(InvalidUnsubscribe):
    """The unsubscribe token is genuine but older than ``UNSUBSCRIBE_LINK_LIFETIME``."""


# The release: what an update email says -------------------------------------------------------


def release_notes(notice: UpdateNotice) -> str:
    """The release notes an update email shows, as plain text: the editor's message, then a
    line for each file version this release brought (title, version, date, the editor's notes).

    The one place the email's notes come from (``build_update_email``, the preview, the desk).
    """
    lines = [
        _("%(title)s: version %(number)s, %(date)s")
        % {"title": title, "number": version.number, "date": date_format(version.created_at)}
        + (f" — {version.notes.strip()}" if version.notes.strip() else "")
        for title, version in released_versions(notice)
    ]
    return "\n\n".join([notice.message, "\n".join(lines)]) if lines else notice.message


def released_versions(notice: UpdateNotice) -> list[tuple[str, Any]]:
    """The file versions a notice announces, oldest first, each with its file's title: those
    released after the product's previous notice (the first notice: every version after a
    file's first) up to this notice."""
    page = notice.product.specific if notice.product_id else None
    if page is None or not isinstance(page, ProductPageMixin):
        return []
    previous = (
        UpdateNotice.objects.filter(product_id=notice.product_id, created_at__lt=notice.created_at)
        .order_by("-created_at")
        .first()
    )
    since = previous.created_at if previous else None
    announced = [
        (file.title, version)
        for file, file_versions in versions.history(page)
        for version in file_versions
        if version.created_at <= notice.created_at
        and (version.created_at > since if since else version.number > 1)
    ]
    return sorted(announced, key=lambda item: (item[1].created_at, item[1].file_id))


def release_key(page: ProductPageMixin) -> str:
    """What makes a publish one release: the update email's words and the product's current file
    versions as published. The same words and files published again (the revision again, a bulk
    publish, a revert) are the same release; a new upload with the same words is a new one."""
    current = sorted((v.file_id, v.number) for v in versions.latest_versions(page))
    text = f"{page.update_subject.strip()}\0{page.update_message.strip()}\0{current}"
    return hashlib.sha256(text.encode()).hexdigest()


# Publishing ------------------------------------------------------------------------------------


def notice_for_publish(page: Any, revision: Any = None, user: Any = None) -> UpdateNotice | None:
    """Record the update notice a published product revision asked for, once per release, and
    queue its first batch once the publish commits. Returns the notice when it is new."""
    if not isinstance(page, ProductPageMixin) or not page.notify_buyers or revision is None:
        return None
    if not page.update_subject.strip() or not page.update_message.strip():
        logger.warning("Page %s asked to notify buyers without a subject or message", page.pk)
        return None
    try:
        with transaction.atomic():
            notice = UpdateNotice.objects.create(
                product_id=page.pk,
                revision=revision,
                release_key=release_key(page),
                subject=" ".join(page.update_subject.split()),
                message=page.update_message.strip(),
                published_by=user if getattr(user, "pk", None) else None,
            )
    except IntegrityError:
        logger.info("Page %s: this release was already told to its buyers", page.pk)
        return None
    transaction.on_commit(partial(enqueue_batch, notice.pk))
    return notice


def enqueue_batch(notice_pk: int) -> None:
    """Hand a notice's next batch to django-q2; a lost enqueue is picked up by the schedule."""
    from django_q.tasks import async_task

    try:
        async_task(BATCH_TASK, notice_pk, group="wagtail_paid_delivery.updates")
    except Exception:
        logger.exception("Could not enqueue update notice %s; the schedule will", notice_pk)


# The email -------------------------------------------------------------------------------------


def is_unsubscribed(address: str) -> bool:
    """Whether ``address`` asked for no more update emails (compared without case)."""
    return UpdateOptOut.objects.filter(address_digest=address_digest(address)).exists()


def build_update_email(
    notice: UpdateNotice,
    purchase: Purchase,
    issued: links.IssuedLink,
    *,
    to: str,
    unsubscribe: str,
) -> EmailMultiAlternatives:
    """The update email: the editor's subject and message, the release notes, a fresh link,
    and the way out (the footer link and RFC 8058's one-click headers)."""
    values = delivery.link_placeholders(issued.link, issued.link.download_limit)
    context = {
        "product_title": purchase.product_title,
        "release_notes": release_notes(notice),
        "url": issued.url,
        "expires": values["expires"],
        "unsubscribe_url": unsubscribe,
    }
    message = EmailMultiAlternatives(
        # Django refuses newlines in headers; the subject is one line anyway.
        subject=" ".join(notice.subject.split()),
        body=render_to_string("wagtail_paid_delivery/email/update.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        headers={
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/update.html", context), "text/html"
    )
    return message


def preview_update_email(page: ProductPageMixin, request: HttpRequest) -> HttpResponse:
    """The product page's "Update email" preview: the email a buyer would get from the page
    as edited (unsaved words included), with a sample link and an unsubscribe link that opens
    nothing."""
    from .screens import SAMPLE_EMAIL, SAMPLE_TOKEN, sample_link

    link = sample_link()
    link.purchase.product_title = str(getattr(page, "title", "") or link.purchase.product_title)
    path = reverse("wagtail_paid_delivery:download", args=[SAMPLE_TOKEN])
    issued = links.IssuedLink(link=link, token=SAMPLE_TOKEN, url=request.build_absolute_uri(path))
    # Unsaved, but of this product and dated now: the preview lists the file versions released
    # since the last notice, as the email would (an upload not yet published is not one yet).
    notice = UpdateNotice(
        product_id=page.pk, subject=page.update_subject, message=page.update_message
    )
    out = reverse("wagtail_paid_delivery:unsubscribe", args=[SAMPLE_TOKEN])
    message = build_update_email(
        notice, link.purchase, issued, to=SAMPLE_EMAIL, unsubscribe=request.build_absolute_uri(out)
    )
    html = str(
        next(content for content, mimetype in message.alternatives if mimetype == "text/html")
    )
    # An HTML email shows no subject: the preview says it above the message.
    head = format_html(
        '<div style="font:14px system-ui,sans-serif;padding:12px 16px;background:#fff;'
        'border-bottom:1px solid #e3e6ec;"><strong>{}</strong> {}<br><strong>{}</strong> {}</div>',
        _("Subject:"),
        message.subject or _("(no subject yet)"),
        _("To:"),
        SAMPLE_EMAIL,
    )
    body_start = html.index(">", html.index("<body")) + 1
    return HttpResponse(html[:body_start] + head + html[body_start:])


# Unsubscribing ---------------------------------------------------------------------------------


def unsubscribe_token(address: str) -> str:
    """A signed, timestamped token naming ``address`` by its digest (no address in the URL)."""
    return signing.TimestampSigner(salt=UNSUBSCRIBE_SALT).sign(address_digest(address))


def unsubscribe_url(address: str, *, purchase: Purchase | None = None) -> str:
    """The absolute unsubscribe URL for ``address``, on the purchase's site."""
    path = reverse("wagtail_paid_delivery:unsubscribe", args=[unsubscribe_token(address)])
    return f"{links.site_root_url(purchase)}{path}"


def read_unsubscribe_token(token: str) -> str:
    """The address digest ``token`` names; raises InvalidUnsubscribe or ExpiredUnsubscribe."""
    signer = signing.TimestampSigner(salt=UNSUBSCRIBE_SALT)
    max_age = app_settings.unsubscribe_link_lifetime
    try:
        digest = signer.unsign(token[:200], max_age=max_age)
    except signing.SignatureExpired as error:
        raise ExpiredUnsubscribe(str(error)) from error
    except signing.BadSignature as error:
        raise InvalidUnsubscribe(str(error)) from error
    if len(digest) != 64:
        raise InvalidUnsubscribe("not an address digest")
    return digest


def unsubscribe(digest: str) -> bool:
    """Record the opt-out of the address ``digest`` names; returns whether it is new. Emails
    already promised to it are not sent (their attempt asks again)."""
    try:
        with transaction.atomic():
            UpdateOptOut.objects.create(address_digest=digest)
    except IntegrityError:
        return False
    return True


# Progress, for the desk ------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeProgress:
    """How far one notice's sending got."""

    notice: UpdateNotice
    recipients: int
    sent: int
    waiting: int
    failed: int
    not_sent: int
    #: The last errors of failed or retrying emails (up to five), for the editor.
    errors: list[str]

    @property
    def finished(self) -> bool:
        return self.notice.queued_at is not None and not self.waiting


def progress(notice: UpdateNotice) -> NoticeProgress:
    emails = OutboundEmail.objects.filter(update_recipient__notice=notice)
    counts = {status: emails.filter(status=status).count() for status in OutboundEmail.Status}
    errors = (
        emails.exclude(last_error="")
        .exclude(status__in=[OutboundEmail.Status.SENT, OutboundEmail.Status.CANCELLED])
        .values_list("last_error", flat=True)[:5]
    )
    return NoticeProgress(
        notice=notice,
        recipients=notice.recipients.count(),
        sent=counts[OutboundEmail.Status.SENT],
        waiting=counts[OutboundEmail.Status.PENDING],
        failed=counts[OutboundEmail.Status.FAILED],
        not_sent=counts[OutboundEmail.Status.CANCELLED],
        errors=[error[:300] for error in errors],
    )


#: Notices the product's panel lists (the newest).
PANEL_NOTICES = 10


def progress_of_product(page: Any) -> list[NoticeProgress]:
    notices = UpdateNotice.objects.filter(product_id=page.pk).order_by("-created_at", "-pk")
    return [progress(notice) for notice in notices[:PANEL_NOTICES]]
