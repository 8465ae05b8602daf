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

The bound browser's download link is ``links.success_page_link``: one per purchase, whatever
the browser sends (a reload, a replayed cookie, two tabs at once), and none once it stopped
working.
"""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_safe

from .. import binding, delivery, fulfillment, languages, links, screens, stripe_api
from ..models import Purchase
from .responses import add_strict_csp, csp_nonce, delivery_headers, render_for

logger = logging.getLogger(__name__)


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


@login_not_required
@require_safe
@delivery_headers
@sensitive_variables("issued", "download_url", "context", "included")  # the link's token
def success(request: HttpRequest) -> HttpResponseBase:
    csp_nonce(request)  # before rendering: the site's base template may use it
    session_id = request.GET.get("session_id", "").strip()
    purchase = find_bound_purchase(request, session_id)
    if purchase is not None and purchase.status == Purchase.Status.PENDING:
        purchase = settle_pending(purchase)

    state = screens.STATE_FOR_STATUS.get(purchase.status) if purchase is not None else None
    if purchase is None or state is None:
        response = render(request, screens.TEMPLATES["success"], screens.neutral_context())
        return _private(response)
    included = screens.included_downloads(purchase) if state == "success" else []
    page = purchase.product_page
    # A bundle of other products only has no link of its own: theirs are the downloads.
    own_files = not included or (page is not None and bool(page.product_files))
    issued = links.success_page_link(purchase) if state == "success" and own_files else None
    download_url = issued.url if issued is not None else None
    product = purchase.product_page
    product_url = (
        product.get_url(request) if state == "failed" and product and product.live else None
    )
    copy = delivery.copy_for(purchase)
    with languages.speaking(purchase.language):
        context = screens.state_context(copy, state, purchase, download_url, product_url)
    context["included"] = included
    response = render_for(request, purchase, screens.TEMPLATES["success"], context)
    if download_url or included:
        # The page shows a token: only scripts with the nonce run (views/responses.py). Other
        # states (pending, failed, neutral) show none and keep the site's own scripts.
        add_strict_csp(request, response)
    return _private(response)


def _private(response: HttpResponse) -> HttpResponse:
    # The page differs by the binding cookie: no shared cache may keep one buyer's version.
    response["Vary"] = "Cookie"
    return response
