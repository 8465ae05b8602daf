"""What each buyer screen shows: its template and the context it renders with.

The views build their pages here, and so does the DeliveryCopy preview (:func:`preview`, called by
``DeliveryCopy.serve_preview``): an editor sees exactly what a buyer would, in the words they are
typing, rendered by the same templates with the same helpers, from an unsaved sample purchase.
This module imports no view, so the admin and the models can reach it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import delivery, licenses, links, receipt, versions
from .forms import ResendForm
from .models import DeliveryCopy, DownloadLink, Purchase
from .serving import archive

#: Each screen's template.
TEMPLATES = {
    "success": "wagtail_paid_delivery/success.html",
    "checkout_unavailable": "wagtail_paid_delivery/checkout_unavailable.html",
    "checkout_limited": "wagtail_paid_delivery/checkout_limited.html",
    "download": "wagtail_paid_delivery/download.html",
    "refused": "wagtail_paid_delivery/download_refused.html",
    "file_unavailable": "wagtail_paid_delivery/download_unavailable.html",
    "resend": "wagtail_paid_delivery/resend.html",
    "resend_done": "wagtail_paid_delivery/resend_done.html",
    "library": "wagtail_paid_delivery/library.html",
    "library_request": "wagtail_paid_delivery/library_request.html",
    "library_sent": "wagtail_paid_delivery/library_sent.html",
    "library_sign_in": "wagtail_paid_delivery/library_sign_in.html",
    "unsubscribe": "wagtail_paid_delivery/unsubscribe.html",
}

#: Purchases that no longer give access, and the state that explains why: its DeliveryCopy
#: fields are ``<state>_title`` and ``<state>_message``, on the success page and on a link's page.
NO_ACCESS_STATES: dict[str, str] = {
    Purchase.Status.REFUNDED: "refunded",
    Purchase.Status.REVOKED: "shop_revoked",
    Purchase.Status.DISPUTED: "suspended",
}

#: Which success-page state a bound browser reads for each purchase status. Only "success"
#: shows a link and only "pending" promises one; no state says a link is coming when none is.
STATE_FOR_STATUS: dict[str, str] = {
    Purchase.Status.PAID: "success",
    Purchase.Status.PENDING: "pending",
    Purchase.Status.FAILED: "failed",
    Purchase.Status.EXPIRED: "failed",
    **NO_ACCESS_STATES,
}

#: What ``{product}`` says on the resend pages when no product was chosen.
NO_PRODUCT = _("your purchases")


# After checkout ------------------------------------------------------------------------------


def neutral_context(copy: DeliveryCopy | None = None) -> dict[str, Any]:
    """The success page for a browser that did not start the checkout.

    The site default copy: a product's own copy would tell a stranger what was bought.
    """
    copy = copy or DeliveryCopy.objects.get_default()
    values = {"product": _("your purchase"), "email": _("the address you paid with")}
    return {
        "state": "neutral",
        "copy": copy,
        "title": copy.render_text("neutral_title", **values),
        "message": copy.render("neutral_message", **values),
    }


def state_context(
    copy: DeliveryCopy,
    state: str,
    purchase: Purchase,
    download_url: str | None = None,
    product_url: str | None = None,
) -> dict[str, Any]:
    """The success page for the browser that started the checkout (``STATE_FOR_STATUS``)."""
    values = {"product": purchase.product_title, "email": purchase.email}
    return {
        "state": state,
        "copy": copy,
        "purchase": purchase,
        "title": copy.render_text(f"{state}_title", **values),
        "message": copy.render(f"{state}_message", **values),
        "download_url": download_url,
        "product_url": product_url,
        "receipt": receipt.receipt_for(purchase) if state == "success" else None,
        "license_key": licenses.key_text(licenses.license_of(purchase))
        if state == "success"
        else "",
    }


def included_downloads(purchase: Purchase) -> list[dict[str, Any]]:
    """A paid bundle's included products on its success page: each one's title, its success
    page link (one per included purchase, as for any purchase: reloads mint nothing) and its
    license key. Empty for a purchase that is not a bundle."""
    shown = []
    for child in purchase.included.filter(status=Purchase.Status.PAID).order_by("pk"):
        issued = links.success_page_link(child)
        shown.append(
            {
                "title": child.product_title,
                "url": issued.url if issued is not None else None,
                "license_key": licenses.key_text(licenses.license_of(child)),
            }
        )
    return shown


def checkout_unavailable_context(page: Any, copy: DeliveryCopy) -> dict[str, Any]:
    return {
        "page": page,
        "copy": copy,
        "title": copy.render_text("checkout_unavailable_title", product=page.title),
        "message": copy.render("checkout_unavailable_message", product=page.title),
    }


def checkout_limited_context(page: Any, retry_after: int) -> dict[str, Any]:
    """The 429 page for a client past ``CHECKOUT_RATE_LIMIT``: when to try again.

    Fixed, translatable words (like resend's 429): the page protects the shop, it is not copy.
    """
    return {"page": page, "minutes": max(1, math.ceil(retry_after / 60))}


# Downloads -----------------------------------------------------------------------------------


def refused_context(
    error: links.LinkRefused, copy: DeliveryCopy, token: str | None = None
) -> dict[str, Any]:
    """Why a link does not open, in the editor's words: the purchase's state when it no longer
    gives access (refunded, revoked by the shop, suspended), else the link's own (expired, used
    up, revoked). Fresh links are offered only while the purchase is paid; ``token`` (the link's,
    when the page has it) lets the resend form answer exactly (``views.resend``)."""
    link = error.link
    purchase = link.purchase
    values = delivery.link_placeholders(link, None)
    state = NO_ACCESS_STATES.get(purchase.status)
    can_resend = purchase.status == Purchase.Status.PAID
    return {
        "link": link,
        "reason": error.reason,
        "state": state,
        "product_title": purchase.product_title,
        "title": copy.render_text(f"{state}_title", **values) if state else "",
        "message": copy.render(
            f"{state}_message" if state else error.copy_field,
            **delivery.link_placeholders(link, None, on_page=True),
        ),
        "can_resend": can_resend,
        "resend_token": token if can_resend else None,
        "copy": copy,
    }


def download_context(
    link: DownloadLink,
    token: str,
    files: list[dict[str, Any]],
    copy: DeliveryCopy,
    download_all_size: int | None = None,
) -> dict[str, Any]:
    """The download page; ``files`` are ``{"file", "left"}`` items; ``download_all_size``: the
    "Download all" archive's size in bytes when the page offers one."""
    # The intro speaks for the files still available; each file shows its own number too.
    left = None
    if link.download_limit is not None:
        left = min((item["left"] for item in files if item["left"]), default=0)
    return {
        "link": link,
        "token": token,
        "product_title": link.purchase.product_title,
        "files": files,
        "download_all_size": download_all_size,
        "unlimited": link.download_limit is None,
        "intro": copy.render(
            "download_intro", **delivery.link_placeholders(link, left, on_page=True)
        ),
        # The page lists the files with their buttons: the receipt does not repeat them.
        "receipt": receipt.receipt_for(link.purchase, files=[]),
        "copy": copy,
        # A bundle without files of its own: its products have links of their own.
        "included_titles": []
        if files
        else list(link.purchase.included.order_by("pk").values_list("product_title", flat=True)),
    }


def download_screen(
    link: DownloadLink, token: str, copy: DeliveryCopy | None = None
) -> tuple[str, dict[str, Any]]:
    """(screen, context) of the download page for a link that works: its files and what is
    left of each, or the used-up page when every file reached its limit. Reads only."""
    copy = copy or delivery.copy_for(link.purchase)
    counts = links.file_counts(link)
    page = link.purchase.product_page
    # Each file as this purchase is served it: its version's facts, number, date and notes.
    served = versions.for_purchase(
        link.purchase, links.product_files(link), page.past_buyers_get if page else ""
    )
    product_files = [item.file for item in served]
    lefts = [links.downloads_left(link, counts.get(f.pk, 0)) for f in product_files]
    files = [
        {"file": item.file, "version": item.version, "left": left}
        for item, left in zip(served, lefts, strict=True)
    ]
    if product_files and all(left == 0 for left in lefts):
        return "refused", refused_context(links.LinkUsedUp(link), copy, token)
    # "Download all": the archive of the files with downloads left (serving.archive).
    all_size = archive.offer_size(
        [f for f, left in zip(product_files, lefts, strict=True) if left != 0]
    )
    return "download", download_context(link, token, files, copy, all_size)


def file_unavailable_context(link: DownloadLink) -> dict[str, Any]:
    return {
        "link": link,
        "product_title": link.purchase.product_title,
        "copy": delivery.copy_for(link.purchase),
    }


# Resend --------------------------------------------------------------------------------------


def resend_form_context(form: ResendForm, copy: DeliveryCopy, product: Any) -> dict[str, Any]:
    title = str(getattr(product, "title", "")) if product is not None else ""
    return {
        "form": form,
        "copy": copy,
        "product": product,
        "product_title": title,
        "intro": copy.render("resend_intro", product=title or NO_PRODUCT),
    }


def resend_for_link_context(copy: DeliveryCopy, purchase: Purchase) -> dict[str, Any]:
    """The answer to a resend asked from a link's page (its holder may know its purchase):
    fresh links are on their way while the purchase is paid; otherwise why none will be sent."""
    values = {"product": purchase.product_title, "email": purchase.email}
    state = NO_ACCESS_STATES.get(purchase.status)
    if purchase.status == Purchase.Status.PAID:
        return {
            "copy": copy,
            "product_title": purchase.product_title,
            "confirmation": copy.render("resend_sent", **values),
        }
    # Not paid and not in NO_ACCESS_STATES (pending, failed): said as a link's page would.
    field = f"{state}_message" if state else "revoked_message"
    return {
        "copy": copy,
        "product_title": purchase.product_title,
        "state": state or "not_paid",
        "title": copy.render_text(f"{state}_title", **values) if state else "",
        "nothing_sent": True,
        "confirmation": copy.render(field, **values),
    }


def resend_done_context(copy: DeliveryCopy, product: Any, email: str = "") -> dict[str, Any]:
    """The one answer every accepted resend request from the anonymous form gets."""
    title = str(getattr(product, "title", "")) if product is not None else ""
    return {
        "copy": copy,
        "product": product,
        "product_title": title,
        "confirmation": copy.render(
            "resend_confirmation", product=title or NO_PRODUCT, email=email
        ),
    }


# The DeliveryCopy preview --------------------------------------------------------------------

#: (mode, label) in the order a buyer meets them; the first is the default.
PREVIEW_MODES: list[tuple[str, Any]] = [
    ("success", _("Success page: paid")),
    ("pending", _("Success page: pending")),
    ("failed", _("Success page: failed")),
    ("refunded", _("Success page: refunded")),
    ("shop_revoked", _("Success page: revoked by the shop")),
    ("suspended", _("Success page: suspended during a dispute")),
    ("neutral", _("Success page: another browser")),
    ("checkout_unavailable", _("Checkout unavailable")),
    ("email", _("Delivery email")),
    ("payment_failed_email", _("Failed payment email")),
    ("download", _("Download page")),
    ("expired", _("Expired link")),
    ("used_up", _("Used-up link")),
    ("revoked", _("Revoked link")),
    ("link_refunded", _("Link of a refunded purchase")),
    ("link_shop_revoked", _("Link of a purchase revoked by the shop")),
    ("link_suspended", _("Link of a purchase suspended during a dispute")),
    ("resend", _("Resend form")),
    ("resend_done", _("Resend confirmation")),
    ("resend_sent", _("Resend confirmation on a link's page")),
    ("resend_email", _("Resend email")),
]

SAMPLE_PRODUCT = "Sample product"
SAMPLE_EMAIL = "buyer@example.com"
#: Not a real token: the preview's buttons lead nowhere.
SAMPLE_TOKEN = "preview-" + "0" * 35
SAMPLE_LIMIT = 5
_REFUSALS = {
    "expired": links.LinkExpired,
    "used_up": links.LinkUsedUp,
    "revoked": links.LinkRevoked,
}
#: The link page of a purchase that no longer gives access: mode → the purchase's status.
_NO_ACCESS_LINKS = {f"link_{state}": status for status, state in NO_ACCESS_STATES.items()}


@dataclass
class SampleFile:
    pk: int
    title: str
    size_display: str
    sha256: str


@dataclass
class SamplePage:
    """Stands in for a product page where a screen shows one (checkout unavailable)."""

    pk: int = 0
    title: str = SAMPLE_PRODUCT
    live: bool = True
    url: str = "#"


def sample_link() -> DownloadLink:
    purchase = Purchase(
        product_title=SAMPLE_PRODUCT,
        email=SAMPLE_EMAIL,
        amount=1250,
        currency="USD",
        amount_subtotal=1250,
        amount_total=1250,
        paid_currency="USD",
        status=Purchase.Status.PAID,
        paid_at=timezone.now(),
    )
    return DownloadLink(
        purchase=purchase,
        reason=DownloadLink.Reason.WEBHOOK,
        expires_at=timezone.now() + timedelta(hours=24),
        download_limit=SAMPLE_LIMIT,
    )


#: The sample files' "Download all" archive (2.4 MB and 18.0 MB, with the ZIP's own bytes).
SAMPLE_ARCHIVE_SIZE = 20_400_000 + 250


def sample_files() -> list[dict[str, Any]]:
    return [
        {
            "file": SampleFile(1, "Sample product (PDF)", "2.4 MB", "9f86d08188" * 6 + "1234"),
            "left": SAMPLE_LIMIT,
        },
        {"file": SampleFile(2, "Extras (ZIP)", "18.0 MB", ""), "left": SAMPLE_LIMIT - 2},
    ]


def _email_preview(
    request: HttpRequest, copy: DeliveryCopy, link: DownloadLink, mode: str
) -> HttpResponse:
    path = reverse("wagtail_paid_delivery:download", args=[SAMPLE_TOKEN])
    issued = links.IssuedLink(link=link, token=SAMPLE_TOKEN, url=request.build_absolute_uri(path))
    if mode == "resend_email":
        message = delivery.build_links_email(SAMPLE_EMAIL, [issued], copy=copy)
    elif mode == "payment_failed_email":
        message = delivery.build_payment_failed_email(link.purchase, copy=copy, retry_url="#")
    else:
        message = delivery.build_delivery_email(link.purchase, issued, copy=copy)
    html = next(content for content, mimetype in message.alternatives if mimetype == "text/html")
    return HttpResponse(html)


def _preview_context(copy: DeliveryCopy, mode: str, link: DownloadLink) -> tuple[str, dict] | None:
    """(screen, context) for a page preview ``mode``; None for an unknown mode."""
    if mode in ("success", "pending", "failed", *NO_ACCESS_STATES.values()):
        download_url = "#" if mode == "success" else None
        product_url = "#" if mode == "failed" else None
        return "success", state_context(copy, mode, link.purchase, download_url, product_url)
    if mode in _REFUSALS:
        return "refused", refused_context(_REFUSALS[mode](link), copy)
    if mode in _NO_ACCESS_LINKS:
        link.purchase.status = _NO_ACCESS_LINKS[mode]
        return "refused", refused_context(links.LinkRevoked(link), copy)
    builders = {
        "neutral": ("success", lambda: neutral_context(copy)),
        "checkout_unavailable": (
            "checkout_unavailable",
            lambda: checkout_unavailable_context(SamplePage(), copy),
        ),
        "download": (
            "download",
            lambda: download_context(link, SAMPLE_TOKEN, sample_files(), copy, SAMPLE_ARCHIVE_SIZE),
        ),
        "resend": ("resend", lambda: resend_form_context(ResendForm(), copy, None)),
        "resend_done": ("resend_done", lambda: resend_done_context(copy, None, SAMPLE_EMAIL)),
        "resend_sent": ("resend_done", lambda: resend_for_link_context(copy, link.purchase)),
    }
    if mode not in builders:
        return None
    screen, build = builders[mode]
    return screen, build()


def preview(copy: DeliveryCopy, request: HttpRequest, mode: str) -> HttpResponseBase:
    """The response for preview ``mode`` of ``copy`` (unsaved edits included)."""
    link = sample_link()
    if mode in ("email", "resend_email", "payment_failed_email"):
        return _email_preview(request, copy, link, mode)
    found = _preview_context(copy, mode, link)
    if found is None:
        return HttpResponse(status=404)
    screen, context = found
    return TemplateResponse(request, TEMPLATES[screen], context)


# "View as this buyer" --------------------------------------------------------------------------
#
# The shop desk shows a purchase's screens as its buyer would read them now, with the same
# contexts and templates as the views, and changes nothing: no link is made (the success page's
# is looked up, not created), nothing is counted, and the buttons carry ``SAMPLE_TOKEN``, which
# opens nothing.


#: The newest links "view as this buyer" shows a page for (older ones rarely still matter).
VIEW_AS_LINKS = 10


@dataclass(frozen=True)
class BuyerScreen:
    """One screen of ``buyer_screens``: its rendered HTML and what the editor should know."""

    key: str
    label: str
    note: str
    html: str
    #: For the email: its subject and recipient.
    subject: str = ""
    to: str = ""


def _success_note(purchase: Purchase, state: str | None, link: DownloadLink | None) -> str:
    if state is None:
        return str(
            _("The purchase is %(status)s: the page says only “check your email”.")
            % {"status": purchase.get_status_display()}
        )
    if state != "success":
        return ""
    if link is None:
        return str(_("The page would make its download link on the buyer's next visit."))
    return ""


def success_screen(purchase: Purchase) -> tuple[dict[str, Any], str]:
    """The success page as the browser that paid would read it now, and a note."""
    state = STATE_FOR_STATUS.get(purchase.status)
    if state is None:
        return neutral_context(), _success_note(purchase, state, None)
    download_url = None
    link = None
    if state == "success":
        link = links.find_success_page_link(purchase)
        shows_link = link is None or _works(link)
        download_url = "#" if shows_link else None
    product = purchase.product_page
    product_url = "#" if state == "failed" and product is not None and product.live else None
    copy = delivery.copy_for(purchase)
    context = state_context(copy, state, purchase, download_url, product_url)
    if state == "success":
        # A bundle's products as the page lists them (read-only: no link is made here).
        context["included"] = [
            {
                "title": child.product_title,
                "url": "#",
                "license_key": licenses.key_text(licenses.license_of(child)),
            }
            for child in purchase.included.filter(status=Purchase.Status.PAID).order_by("pk")
        ]
    note = _success_note(purchase, state, link)
    if state == "success" and not download_url:
        note = str(_("The page's link expired or was revoked: it shows no link."))
    return context, note


def _works(link: DownloadLink) -> bool:
    try:
        links.check_link(link)
    except links.LinkError:
        return False
    return True


def link_screen(link: DownloadLink) -> tuple[str, dict[str, Any]]:
    """What opening ``link`` shows its buyer now: the download page or why it is refused."""
    copy = delivery.copy_for(link.purchase)
    try:
        links.check_link(link)
    except links.LinkRefused as error:
        return "refused", refused_context(error, copy)
    return download_screen(link, SAMPLE_TOKEN, copy)


def delivery_email_screen(purchase: Purchase, request: HttpRequest) -> BuyerScreen:
    """The delivery email as a resend would send it now (the product's link rules), with a
    link that opens nothing."""
    lifetime, limit = links.link_rules(purchase)
    link = DownloadLink(
        purchase=purchase,
        reason=DownloadLink.Reason.ADMIN,
        expires_at=timezone.now() + lifetime,
        download_limit=limit,
    )
    path = reverse("wagtail_paid_delivery:download", args=[SAMPLE_TOKEN])
    issued = links.IssuedLink(link=link, token=SAMPLE_TOKEN, url=request.build_absolute_uri(path))
    message = delivery.build_delivery_email(purchase, issued)
    html = next(content for content, mimetype in message.alternatives if mimetype == "text/html")
    paid = purchase.status == Purchase.Status.PAID
    note = "" if paid else str(_("Sent only for paid purchases."))
    return BuyerScreen(
        "email",
        str(_("Delivery email")),
        note,
        str(html),
        subject=str(message.subject),
        to=", ".join(message.to),
    )


def buyer_screens(purchase: Purchase, request: HttpRequest) -> list[BuyerScreen]:
    """The screens of ``purchase`` as its buyer reads them now: the success page, the page
    each of its links opens (the newest ``VIEW_AS_LINKS``), the delivery email. Changes
    nothing."""
    context, note = success_screen(purchase)
    html = render_to_string(TEMPLATES["success"], context, request=request)
    screens = [BuyerScreen("success", str(_("Success page")), note, html)]
    for link in purchase.links.order_by("-created_at", "-pk")[:VIEW_AS_LINKS]:
        link.purchase = purchase
        screen, context = link_screen(link)
        label = str(_("Link #%(link)s (%(reason)s)")) % {
            "link": link.pk,
            "reason": link.get_reason_display(),
        }
        note = str(_("Download page")) if screen == "download" else str(_("Refused page"))
        html = render_to_string(TEMPLATES[screen], context, request=request)
        screens.append(BuyerScreen(f"link-{link.pk}", label, note, html))
    screens.append(delivery_email_screen(purchase, request))
    return screens
