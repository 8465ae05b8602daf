"""What reaches the buyer: which words (DeliveryCopy) a purchase or product is told in, the
delivery and resend messages, and the library's sign-in message.

Messages carry a link to the download page (never a storage URL). They are built here and sent
by ``outbox``, which records each email it promised and retries it until it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext as _

from . import library, licenses, links, receipt, times
from .models import DeliveryCopy, DownloadLink, ProductPageMixin, Purchase

logger = logging.getLogger(__name__)


def copy_for(
    purchase: Purchase | None = None, *, product: ProductPageMixin | None = None
) -> DeliveryCopy:
    """The words a buyer reads about ``purchase`` (or ``product``): the product's own copy,
    else the site default (also when the product page is gone); in its translation into the
    purchase's language (else the language being spoken) when it has one."""
    if product is None and purchase is not None:
        product = purchase.product_page
    copy = (
        product.get_delivery_copy() if product is not None else DeliveryCopy.objects.get_default()
    )
    language = purchase.language if purchase is not None and purchase.language else None
    return copy.in_language(language or translation.get_language())


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
    issued: links.IssuedLink | None,
    *,
    included: Sequence[links.IssuedLink] = (),
    copy: DeliveryCopy | None = None,
    to: str | None = None,
) -> EmailMultiAlternatives:
    """The HTML and plain-text message for ``purchase`` with the freshly issued link.

    ``included``: a bundle's links, one per product it included (each with its license key);
    ``issued`` is then the bundle's own link, or None when the bundle has no files of its own.
    ``copy``: the words to use instead of the product's (the admin preview passes the copy being
    edited). ``to``: the recipient, if not the purchase's address (the outbox sends to the
    address it recorded).
    """
    first = issued or included[0]
    copy = copy or copy_for(purchase)
    values = link_placeholders(first.link, first.link.download_limit)
    context = {
        "purchase": purchase,
        "product_title": purchase.product_title,
        "url": issued.url if issued is not None else "",
        "expires": values["expires"],
        "body_html": copy.render("email_body", **values),
        "body_text": copy.render_text("email_body", **values),
        "receipt": receipt.receipt_for(purchase),
        "license_key": licenses.key_text(licenses.license_of(purchase)),
        "included": [
            {
                "title": one.link.purchase.product_title,
                "url": one.url,
                "license_key": licenses.key_text(licenses.license_of(one.link.purchase)),
            }
            for one in included
        ],
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


# The resend message ---------------------------------------------------------------------------


def build_links_email(
    to: str, issued: list[links.IssuedLink], *, copy: DeliveryCopy | None = None
) -> EmailMultiAlternatives:
    """One message listing a fresh link for each purchase (the resend email).

    In the words of the product's copy when every link is for one product, else the site
    default's; ``copy``: the words to use instead (the admin preview passes the copy edited).
    """
    items = []
    for one in issued:
        items.append(
            {
                "product_title": one.link.purchase.product_title,
                "url": one.url,
                "expires": expires_display(one.link),
            }
        )
    purchases = [one.link.purchase for one in issued]
    if copy is None:
        products = {p.product_id for p in purchases}
        copy = copy_for(purchases[0]) if len(products) == 1 else copy_for()
    titles = {p.product_title for p in purchases}
    values = {
        "product": titles.pop() if len(titles) == 1 else _("your purchases"),
        "email": to,
    }
    context = {
        "items": items,
        "email": to,
        "intro_html": copy.render("resend_email_intro", **values),
        "intro_text": copy.render_text("resend_email_intro", **values),
    }
    message = EmailMultiAlternatives(
        subject=one_line(copy.render_text("resend_email_subject", **values)),
        body=render_to_string("wagtail_paid_delivery/email/links.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/links.html", context), "text/html"
    )
    return message


# The library's sign-in message -----------------------------------------------------------------


def build_sign_in_email(to: str, issued: library.IssuedSignIn) -> EmailMultiAlternatives:
    """The one-time sign-in link to the library (library/), for an address that bought."""
    sign_in = issued.sign_in
    minutes = max(1, round((sign_in.expires_at - sign_in.created_at).total_seconds() / 60))
    context = {
        "url": issued.url,
        "email": to,
        "minutes": minutes,
        # With its zone, like every time a buyer reads (``times``).
        "expires": times.absolute(sign_in.expires_at),
    }
    message = EmailMultiAlternatives(
        subject=str(_("Sign in to your downloads")),
        body=render_to_string("wagtail_paid_delivery/email/library_sign_in.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/library_sign_in.html", context), "text/html"
    )
    return message


# The failed payment message ---------------------------------------------------------------------


def product_url(purchase: Purchase) -> str | None:
    """The full URL of the product page ``purchase`` sold, while it is live; else None."""
    page = purchase.product_page
    if page is None or not page.live:
        return None
    url: str | None = page.get_full_url()
    return url


def build_payment_failed_email(
    purchase: Purchase,
    *,
    copy: DeliveryCopy | None = None,
    to: str | None = None,
    retry_url: str | None = None,
) -> EmailMultiAlternatives:
    """The message for a purchase whose asynchronous payment (a bank debit) failed: no money
    was taken, nothing will be delivered, and where to try again (``retry_url``: the product
    page, by default; none when the product is no longer sold)."""
    copy = copy or copy_for(purchase)
    values = {"product": purchase.product_title, "email": purchase.email}
    context = {
        "purchase": purchase,
        "product_title": purchase.product_title,
        "retry_url": retry_url if retry_url is not None else product_url(purchase),
        "body_html": copy.render("payment_failed_email_body", **values),
        "body_text": copy.render_text("payment_failed_email_body", **values),
    }
    message = EmailMultiAlternatives(
        subject=one_line(copy.render_text("payment_failed_email_subject", **values)),
        body=render_to_string("wagtail_paid_delivery/email/payment_failed.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to or purchase.email],
    )
    message.attach_alternative(
        render_to_string("wagtail_paid_delivery/email/payment_failed.html", context), "text/html"
    )
    return message


def one_line(subject: str) -> str:
    # Header injection is impossible (Django refuses newlines), but keep a subject one line.
    return " ".join(subject.split())
