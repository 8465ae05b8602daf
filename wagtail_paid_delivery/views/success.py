"""Where Stripe sends the buyer back after paying: ``thanks/?session_id=cs_…``.

The redirect is only UX; the webhook confirms the purchase. But a webhook can be late, so for a
purchase still pending this page asks Stripe itself, through the same ``fulfill_checkout`` the
webhook task uses (idempotent: a reload, or the webhook arriving at the same moment, never
fulfills twice).

Only the browser that started the checkout (it holds the signed binding cookie) learns the
purchase's status. Anyone else with the URL (a forwarded link, a shared screenshot, a guessed
id) reads the neutral "check your email" copy, always with status 200, and their visit does not
call Stripe: what they would learn or trigger is exactly nothing, and the webhook (or the
bound browser) does the fulfilling.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_safe

from .. import binding, fulfillment, stripe_api, tokens
from ..models import DeliveryCopy, DownloadLink, Purchase

logger = logging.getLogger(__name__)

#: Which copy a bound browser reads for each purchase status.
STATE_FOR_STATUS: dict[str, str] = {
    Purchase.Status.PAID: "success",
    Purchase.Status.PENDING: "pending",
    Purchase.Status.FAILED: "failed",
    Purchase.Status.EXPIRED: "failed",
    # Refunded, disputed or revoked: the e-mail and the download page explain; stay neutral.
}


def find_bound_purchase(request: HttpRequest, session_id: str) -> Purchase | None:
    """The purchase of ``session_id``, only if this browser started its checkout."""
    if not session_id or len(session_id) > 255:
        return None
    purchase = (
        Purchase.objects.filter(stripe_checkout_session_id=session_id)
        .select_related("product")
        .first()
    )
    if purchase is None or not binding.is_bound(request, purchase.public_id):
        return None
    return purchase


def settle_pending(purchase: Purchase) -> Purchase:
    """Ask Stripe about a pending purchase (the webhook may be late); never raises."""
    try:
        result = fulfillment.fulfill_checkout(purchase.stripe_checkout_session_id or "")
    except stripe_api.StripeUnavailable:
        logger.info("Success page: Stripe unavailable for %s; showing pending.", purchase.pk)
    except Exception:
        # The buyer still gets an honest "processing" page; the webhook will settle it.
        logger.exception("Success page: fulfilling purchase %s failed.", purchase.pk)
    else:
        if result.purchase is not None and result.purchase.pk == purchase.pk:
            return result.purchase
    purchase.refresh_from_db()
    return purchase


def _copy_for(purchase: Purchase) -> DeliveryCopy:
    product = purchase.product.specific if purchase.product is not None else None
    if product is not None and hasattr(product, "get_delivery_copy"):
        return product.get_delivery_copy()
    return DeliveryCopy.objects.get_default()


def _neutral_context(copy: DeliveryCopy | None = None) -> dict[str, Any]:
    # The site default copy: a product's own copy would tell a stranger what was bought.
    # (``copy``: the admin preview passes the copy being edited.)
    copy = copy or DeliveryCopy.objects.get_default()
    values = {"product": _("your purchase"), "email": _("the address you paid with")}
    return {
        "state": "neutral",
        "copy": copy,
        "title": copy.render_text("neutral_title", **values),
        "message": copy.render("neutral_message", **values),
    }


def success_page_link(request: HttpRequest, purchase: Purchase) -> tuple[str | None, str | None]:
    """(download page URL, new raw token to remember) for a paid purchase's bound browser.

    The token this browser was given before is reused while it still works; only when it has
    none (or it stopped working) is a new link issued, and its raw token goes into the signed
    binding cookie, nowhere else.
    """
    known = binding.download_token(request, purchase.public_id)
    if known:
        try:
            link = tokens.check_token(known)
        except tokens.LinkError:
            pass
        else:
            if link.purchase_id == purchase.pk:
                return tokens.download_page_url(known, purchase=purchase), None
    try:
        issued = tokens.issue_link(purchase, reason=DownloadLink.Reason.SUCCESS_PAGE)
    except tokens.CannotIssueLink:
        return None, None
    return issued.url, issued.token


def state_context(
    copy: DeliveryCopy,
    state: str,
    purchase: Purchase,
    download_url: str | None = None,
    product_url: str | None = None,
) -> dict[str, Any]:
    """The context of ``success.html`` for a bound browser (also built by the admin preview)."""
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


@login_not_required
@require_safe
def success(request: HttpRequest) -> HttpResponse:
    session_id = request.GET.get("session_id", "").strip()
    purchase = find_bound_purchase(request, session_id)
    if purchase is not None and purchase.status == Purchase.Status.PENDING:
        purchase = settle_pending(purchase)

    state = STATE_FOR_STATUS.get(purchase.status) if purchase is not None else None
    download_url = new_token = None
    if purchase is not None and state == "success":
        download_url, new_token = success_page_link(request, purchase)
    if purchase is None or state is None:
        context = _neutral_context()
    else:
        product = purchase.product
        product_url = (
            product.specific.get_url(request)
            if state == "failed" and product is not None and product.live
            else None
        )
        context = state_context(_copy_for(purchase), state, purchase, download_url, product_url)
    response = render(request, "wagtail_paid_delivery/success.html", context)
    if purchase is not None and new_token:
        binding.remember_download_token(request, response, purchase.public_id, new_token)
    # Per-buyer, possibly secret content: never cached, never indexed, its URL (with the
    # session id) never sent to other sites.
    response["Cache-Control"] = "private, no-store"
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex"
    response["Vary"] = "Cookie"
    return response
