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
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import delivery, links
from .forms import ResendForm
from .models import DeliveryCopy, DownloadLink, Purchase

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
}

#: Which success-page state a bound browser reads for each purchase status. Refunded, disputed
#: or revoked: the email and the download page explain; the page stays neutral.
STATE_FOR_STATUS: dict[str, str] = {
    Purchase.Status.PAID: "success",
    Purchase.Status.PENDING: "pending",
    Purchase.Status.FAILED: "failed",
    Purchase.Status.EXPIRED: "failed",
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
    """The success page for the browser that started the checkout: paid, pending or failed."""
    values = {"product": purchase.product_title, "email": purchase.email}
    return {
        "state": state,
        "copy": copy,
        "purchase": purchase,
        "title": copy.render_text(f"{state}_title", **values),
        "message": copy.render(f"{state}_message", **values),
        "download_url": download_url,
        "product_url": product_url,
    }


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


def refused_context(error: links.LinkRefused, copy: DeliveryCopy) -> dict[str, Any]:
    """Why a link does not open (expired, used up, revoked…), in the editor's words."""
    link = error.link
    return {
        "link": link,
        "reason": error.reason,
        "product_title": link.purchase.product_title,
        "message": copy.render(
            error.copy_field, **delivery.link_placeholders(link, None, on_page=True)
        ),
        "copy": copy,
    }


def download_context(
    link: DownloadLink, token: str, files: list[dict[str, Any]], copy: DeliveryCopy
) -> dict[str, Any]:
    """The download page; ``files`` are ``{"file", "left"}`` items."""
    # The intro speaks for the files still available; each file shows its own number too.
    left = None
    if link.download_limit is not None:
        left = min((item["left"] for item in files if item["left"]), default=0)
    return {
        "link": link,
        "token": token,
        "product_title": link.purchase.product_title,
        "files": files,
        "unlimited": link.download_limit is None,
        "intro": copy.render(
            "download_intro", **delivery.link_placeholders(link, left, on_page=True)
        ),
        "copy": copy,
    }


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


def resend_done_context(copy: DeliveryCopy, product: Any, email: str = "") -> dict[str, Any]:
    """The one answer every accepted resend request gets."""
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
    ("neutral", _("Success page: another browser")),
    ("checkout_unavailable", _("Checkout unavailable")),
    ("email", _("Delivery email")),
    ("download", _("Download page")),
    ("expired", _("Expired link")),
    ("used_up", _("Used-up link")),
    ("revoked", _("Revoked link")),
    ("resend", _("Resend form")),
    ("resend_done", _("Resend confirmation")),
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
        status=Purchase.Status.PAID,
        paid_at=timezone.now(),
    )
    return DownloadLink(
        purchase=purchase,
        reason=DownloadLink.Reason.WEBHOOK,
        expires_at=timezone.now() + timedelta(hours=24),
        download_limit=SAMPLE_LIMIT,
    )


def sample_files() -> list[dict[str, Any]]:
    return [
        {
            "file": SampleFile(1, "Sample product (PDF)", "2.4 MB", "9f86d08188" * 6 + "1234"),
            "left": SAMPLE_LIMIT,
        },
        {"file": SampleFile(2, "Extras (ZIP)", "18.0 MB", ""), "left": SAMPLE_LIMIT - 2},
    ]


def _email_preview(request: HttpRequest, copy: DeliveryCopy, link: DownloadLink) -> HttpResponse:
    path = reverse("wagtail_paid_delivery:download", args=[SAMPLE_TOKEN])
    issued = links.IssuedLink(link=link, token=SAMPLE_TOKEN, url=request.build_absolute_uri(path))
    message = delivery.build_delivery_email(link.purchase, issued, copy=copy)
    html = next(content for content, mimetype in message.alternatives if mimetype == "text/html")
    return HttpResponse(html)


def _preview_context(copy: DeliveryCopy, mode: str, link: DownloadLink) -> tuple[str, dict] | None:
    """(screen, context) for a page preview ``mode``; None for an unknown mode."""
    if mode in ("success", "pending", "failed"):
        download_url = "#" if mode == "success" else None
        product_url = "#" if mode == "failed" else None
        return "success", state_context(copy, mode, link.purchase, download_url, product_url)
    if mode in _REFUSALS:
        return "refused", refused_context(_REFUSALS[mode](link), copy)
    builders = {
        "neutral": ("success", lambda: neutral_context(copy)),
        "checkout_unavailable": (
            "checkout_unavailable",
            lambda: checkout_unavailable_context(SamplePage(), copy),
        ),
        "download": (
            "download",
            lambda: download_context(link, SAMPLE_TOKEN, sample_files(), copy),
        ),
        "resend": ("resend", lambda: resend_form_context(ResendForm(), copy, None)),
        "resend_done": ("resend_done", lambda: resend_done_context(copy, None, SAMPLE_EMAIL)),
    }
    if mode not in builders:
        return None
    screen, build = builders[mode]
    return screen, build()


def preview(copy: DeliveryCopy, request: HttpRequest, mode: str) -> HttpResponseBase:
    """The response for preview ``mode`` of ``copy`` (unsaved edits included)."""
    link = sample_link()
    if mode == "email":
        return _email_preview(request, copy, link)
    found = _preview_context(copy, mode, link)
    if found is None:
        return HttpResponse(status=404)
    screen, context = found
    return TemplateResponse(request, TEMPLATES[screen], context)
