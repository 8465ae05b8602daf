"""The admin preview of a DeliveryCopy: every buyer screen and the email, with sample values.

Each mode renders the template the real view renders, with a context built by the same helper
the view uses (``views.download.page_context``, ``views.success.state_context`` and so on), from
an unsaved sample purchase, link and files. So an editor sees exactly what a buyer would, in the
words they are typing, before saving.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import tokens

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


@dataclass
class SampleFile:
    pk: int
    title: str
    size_display: str
    sha256: str


@dataclass
class SamplePage:
    """Stands in for a product page where a view reads one (checkout unavailable)."""

    copy: Any
    pk: int = 0
    title: str = SAMPLE_PRODUCT
    live: bool = True
    url: str = "#"

    def get_delivery_copy(self) -> Any:
        return self.copy


def sample_link() -> Any:
    from .models import DownloadLink, Purchase

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


def serve(copy: Any, request: HttpRequest, mode: str) -> HttpResponseBase:
    """The response for preview ``mode`` of ``copy`` (unsaved edits included)."""
    from .emails import build_delivery_email
    from .views import checkout, download, resend, success

    link = sample_link()
    purchase = link.purchase
    if mode in ("success", "pending", "failed"):
        context = success.state_context(
            copy,
            mode,
            purchase,
            download_url="#" if mode == "success" else None,
            product_url="#" if mode == "failed" else None,
        )
        return TemplateResponse(request, "wagtail_paid_delivery/success.html", context)
    if mode == "neutral":
        context = success._neutral_context(copy)
        return TemplateResponse(request, "wagtail_paid_delivery/success.html", context)
    if mode == "checkout_unavailable":
        return checkout.render_unavailable(request, SamplePage(copy), status=200)
    if mode == "email":
        path = reverse("wagtail_paid_delivery:download", args=[SAMPLE_TOKEN])
        issued = tokens.IssuedLink(
            link=link, token=SAMPLE_TOKEN, url=request.build_absolute_uri(path)
        )
        message = build_delivery_email(purchase, issued, copy=copy)
        html = next(
            content for content, mimetype in message.alternatives if mimetype == "text/html"
        )
        return HttpResponse(html)
    if mode == "download":
        context = download.page_context(link, SAMPLE_TOKEN, sample_files(), copy)
        return TemplateResponse(request, "wagtail_paid_delivery/download.html", context)
    refusals = {
        "expired": tokens.LinkExpired,
        "used_up": tokens.LinkUsedUp,
        "revoked": tokens.LinkRevoked,
    }
    if mode in refusals:
        context = download.refused_context(refusals[mode](link), copy)
        return TemplateResponse(request, "wagtail_paid_delivery/download_refused.html", context)
    if mode == "resend":
        context = resend.form_context(resend.ResendForm(), copy, None)
        return TemplateResponse(request, "wagtail_paid_delivery/resend.html", context)
    if mode == "resend_done":
        context = resend.done_context(copy, None, SAMPLE_EMAIL)
        return TemplateResponse(request, "wagtail_paid_delivery/resend_done.html", context)
    return HttpResponse(status=404)
