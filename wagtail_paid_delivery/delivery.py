"""What reaches the buyer: the delivery and resend emails, and which words (DeliveryCopy) a
purchase or product is told in.

Emails carry a link to the download page (never a storage URL). ``deliver_purchase`` and
``resend_links`` are the rules the tasks of the same names call.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from . import links
from .conf import app_settings
from .models import DeliveryCopy, DownloadLink, ProductPageMixin, Purchase

logger = logging.getLogger(__name__)


def copy_for(
    purchase: Purchase | None = None, *, product: ProductPageMixin | None = None
) -> DeliveryCopy:
    """The words a buyer reads about ``purchase`` (or ``product``): the product's own copy,
    else the site default (also when the product page is gone)."""
    if product is None and purchase is not None:
        product = purchase.product_page
    return (
        product.get_delivery_copy() if product is not None else DeliveryCopy.objects.get_default()
    )


def expires_display(link: DownloadLink) -> str:
    return formats.date_format(timezone.localtime(link.expires_at), "DATETIME_FORMAT")


def link_placeholders(link: DownloadLink, downloads_left: int | None) -> dict[str, Any]:
    """The values of DeliveryCopy's placeholders for a link (None downloads left: unlimited)."""
    return {
        "product": link.purchase.product_title,
        "email": link.purchase.email,
        "expires": expires_display(link),
        "downloads_left": links.UNLIMITED if downloads_left is None else downloads_left,
    }


def build_delivery_email(
    purchase: Purchase, issued: links.IssuedLink, *, copy: DeliveryCopy | None = None
) -> EmailMultiAlternatives:
    """The HTML and plain-text message for ``purchase`` with the freshly issued link.

    ``copy``: the words to use instead of the product's (the admin preview passes the copy being
    edited).
    """
    link = issued.link
    copy = copy or copy_for(purchase)
    values = link_placeholders(link, link.download_limit)
    context = {
        "purchase": purchase,
        "product_title": purchase.product_title,
        "url": issued.url,
        "expires": values["expires"],
        "body_html": copy.render("email_body", **values),
        "body_text": copy.render_text("email_body", **values),
    }
    # Header injection is impossible (Django refuses newlines), but keep the subject one line.
    subject = " ".join(copy.render_text("email_subject", **values).split())
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("wagtail_paid_delivery/email/delivery.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[purchase.email],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/delivery.html", context), "text/html"
    )
    return message


def deliver_purchase(purchase_pk: int) -> str:
    """Issue a link and email it to the buyer, at most once per purchase; returns the outcome.

    The Purchase row stays locked while the message is sent and ``delivery_email_sent_at`` is
    set, so a duplicate run (the broker delivers at least once; ``purchase_paid`` may be told
    twice) waits, then sees it sent. If sending raises, the transaction rolls back (no link, no
    mark) and the error propagates so django-q2 records a failed task to retry. A crash between
    the SMTP hand-over and the commit can still send twice: at-least-once, never zero.
    """
    with transaction.atomic():
        purchase = Purchase.objects.select_for_update().filter(pk=purchase_pk).first()
        if purchase is None:
            logger.warning("Delivery email: purchase %s no longer exists", purchase_pk)
            return "missing"
        if purchase.delivery_email_sent_at is not None:
            return "already_sent"
        if purchase.status != Purchase.Status.PAID:
            return f"not_paid ({purchase.status})"
        if not purchase.email:
            logger.warning("Delivery email: purchase %s has no email address", purchase_pk)
            return "no_email"
        issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
        build_delivery_email(purchase, issued).send()
        purchase.delivery_email_sent_at = timezone.now()
        purchase.save(update_fields=["delivery_email_sent_at", "updated_at"])
    return "sent"


# The buyer's library ---------------------------------------------------------------------------


def library_purchases(user: Any) -> QuerySet[Purchase]:
    """The paid purchases ``user`` may download from the library, newest first.

    Matched by user, and by email address too when ``LIBRARY_MATCH_EMAIL`` is on (only for sites
    whose accounts have verified addresses: otherwise signing up with a buyer's address would
    open their purchases).
    """
    match = Q(user_id=user.pk)
    email = (getattr(user, "email", "") or "").strip()
    if app_settings.LIBRARY_MATCH_EMAIL and email:
        match |= Q(email__iexact=email)
    return (
        Purchase.objects.filter(match, status=Purchase.Status.PAID)
        .select_related("product")
        .order_by("-paid_at", "-pk")
    )


# Resending links ------------------------------------------------------------------------------

#: Purchases listed in one resend email at most (the most recent first).
RESEND_MAX_PURCHASES = 50


def build_links_email(to: str, issued: list[links.IssuedLink]) -> EmailMultiAlternatives:
    """One message listing a fresh link for each purchase (the resend email)."""
    items = []
    for one in issued:
        items.append(
            {
                "product_title": one.link.purchase.product_title,
                "url": one.url,
                "expires": expires_display(one.link),
            }
        )
    context = {"items": items, "email": to}
    if len(items) == 1:
        subject = _("Your download link: %(product)s") % {"product": items[0]["product_title"]}
    else:
        subject = _("Your download links")
    message = EmailMultiAlternatives(
        subject=" ".join(str(subject).split()),
        body=render_to_string("wagtail_paid_delivery/email/links.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/links.html", context), "text/html"
    )
    return message


def resend_links(email: str, product_id: int | None = None) -> str:
    """Email fresh links (reason RESEND) for the paid purchases of ``email``; returns the outcome.

    One message lists every paid purchase of the address (or only those of ``product_id``).
    An address with none gets nothing. Links are issued in the same transaction as the send, so
    a failed send leaves no links behind and the task may be retried.
    """
    email = (email or "").strip()
    if not email:
        return "no_email"
    purchases = Purchase.objects.filter(email__iexact=email, status=Purchase.Status.PAID)
    if product_id is not None:
        purchases = purchases.filter(product_id=product_id)
    found = list(
        purchases.select_related("product").order_by("-paid_at", "-pk")[:RESEND_MAX_PURCHASES]
    )
    if not found:
        return "nothing"
    with transaction.atomic():
        issued = [links.issue_link(p, reason=DownloadLink.Reason.RESEND) for p in found]
        # The address on record (the buyer's own spelling), not the one typed into the form.
        build_links_email(found[0].email, issued).send()
    return f"sent {len(issued)}"
