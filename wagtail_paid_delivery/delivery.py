"""What reaches the buyer: which words (DeliveryCopy) a purchase or product is told in, the
delivery and resend messages, and the library's purchases.

Messages carry a link to the download page (never a storage URL). They are built here and sent
by ``outbox``, which records each email it promised and retries it until it is sent.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.utils.translation import gettext as _

from . import links, times
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
    """When ``link`` expires, with the zone: what emails say."""
    return times.absolute(link.expires_at)


def link_placeholders(
    link: DownloadLink, downloads_left: int | None, *, on_page: bool = False
) -> dict[str, Any]:
    """The values of DeliveryCopy's placeholders for a link (None downloads left: unlimited).

    ``on_page``: ``{expires}`` also says how far it is ("in 23 hours"); an email, read later,
    gives only the time and its zone.
    """
    return {
        "product": link.purchase.product_title,
        "email": link.purchase.email,
        "expires": times.Moment(link.expires_at, with_relative=on_page),
        "downloads_left": links.UNLIMITED if downloads_left is None else downloads_left,
    }


def build_delivery_email(
    purchase: Purchase,
    issued: links.IssuedLink,
    *,
    copy: DeliveryCopy | None = None,
    to: str | None = None,
) -> EmailMultiAlternatives:
    """The HTML and plain-text message for ``purchase`` with the freshly issued link.

    ``copy``: the words to use instead of the product's (the admin preview passes the copy being
    edited). ``to``: the recipient, if not the purchase's address (the outbox sends to the
    address it recorded).
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
        to=[to or purchase.email],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/delivery.html", context), "text/html"
    )
    return message


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


# The resend message ---------------------------------------------------------------------------


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
