"""The Buy button's target: start (or reuse) a checkout and 303 the buyer to Stripe.

No CSRF token: product pages are often served from a front-end cache, and a token (or the CSRF
cookie it needs) would either be baked into the cached HTML for every visitor or force the page
to vary per visitor. Instead the view checks the request's Origin (Referer when a browser sends
no Origin) against the site's own origin, which is what Django's CSRF protection also relies on
for HTTPS requests. A cross-site form cannot forge Origin, and all a successful forgery could do
is open a Checkout page for the victim, which they would still have to pay themselves.
The rules of what is bought, and how a double click stays one checkout (the form's nonce, the
binding cookie), live in ``checkout.py``.

Every Buy click from this site's pages counts against ``CHECKOUT_RATE_LIMIT`` per client
(``limits``), before anything is written or Stripe is called: past it, a 429 page says how long
to wait. Refused origins do not count, so another site cannot use up a buyer's clicks.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers
from django.utils.http import is_same_domain
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import binding, delivery, limits, screens
from .. import checkout as checkout_rules
from ..conf import app_settings
from ..models.pages import live_product_page
from .responses import see_other

logger = logging.getLogger(__name__)


# Origin check ---------------------------------------------------------------------------------


def origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port and port != default_port:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def request_origin(request: HttpRequest) -> str | None:
    """The origin the browser says the form was on: Origin, or Referer when Origin is absent."""
    origin = request.headers.get("Origin")
    if origin is not None:
        # "null" (sandboxed frames, some privacy modes) names no origin: not ours.
        return origin_of(origin) if origin != "null" else None
    referer = request.headers.get("Referer")
    return origin_of(referer) if referer else None


def origin_allowed(request: HttpRequest, page: Any) -> bool:
    """Whether the POST came from one of this site's own pages.

    Accepted: the product's Wagtail Site root URL, the origin of the request itself (its scheme
    and validated Host, as Django's CSRF check does) and ``CSRF_TRUSTED_ORIGINS``.
    """
    origin = request_origin(request)
    if origin is None:
        return False
    own = {origin_of(f"{request.scheme}://{request.get_host()}")}
    site = page.get_site()
    if site is not None:
        own.add(origin_of(site.root_url))
    if origin in own:
        return True
    scheme, origin_host = urlsplit(origin)[:2]
    for trusted in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
        parts = urlsplit(trusted)
        if parts.scheme != scheme:
            continue
        if parts.netloc.startswith("*"):
            # As Django's CSRF check reads "https://*.example.com": any subdomain.
            if is_same_domain(origin_host, parts.netloc[1:]):
                return True
        elif origin_of(trusted) == origin:
            return True
    return False


# The view -------------------------------------------------------------------------------------


def get_purchasable_page(request: HttpRequest, page_id: int) -> Any:
    """The live product page this request may buy, or 404. Files are checked by the caller."""
    page = live_product_page(page_id)
    if page is None:
        raise Http404(_("No product here."))
    # A product behind a password or login is sold only to who may see it.
    for restriction in page.get_view_restrictions():
        if not restriction.accept_request(request):
            raise Http404(_("No product here."))
    if page.get_site() is None:
        # Not reachable on any site: there would be nowhere to send the buyer back to.
        raise Http404(_("No product here."))
    return page


def posted_nonce(request: HttpRequest) -> str:
    """The Buy form's nonce (checkout.js fills it in), from the body only and only when sent
    once; ``checkout.nonce_key`` checks its shape."""
    values = request.POST.getlist("checkout_nonce")
    return values[0] if len(values) == 1 else ""


def render_unavailable(request: HttpRequest, page: Any, *, status: int) -> HttpResponse:
    context = screens.checkout_unavailable_context(page, delivery.copy_for(product=page))
    response = render(request, screens.TEMPLATES["checkout_unavailable"], context, status=status)
    add_never_cache_headers(response)
    return response


def render_limited(request: HttpRequest, page: Any, retry_after: int) -> HttpResponse:
    context = screens.checkout_limited_context(page, retry_after)
    response = render(request, screens.TEMPLATES["checkout_limited"], context, status=429)
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


@csrf_exempt  # Origin is checked instead; see the module docstring.
@login_not_required
@require_POST
def checkout(request: HttpRequest, page_id: int) -> HttpResponse:
    page = get_purchasable_page(request, page_id)
    if not origin_allowed(request, page):
        logger.warning(
            "Checkout for page %s refused: origin %r is not this site's.",
            page_id,
            request.headers.get("Origin") or request.headers.get("Referer"),
        )
        return HttpResponseForbidden(_("This form must be sent from this site's own pages."))
    wait = limits.hit(
        request, "checkout", limits.client_key(request), app_settings.CHECKOUT_RATE_LIMIT
    )
    if wait is not None:
        logger.warning("Checkout for page %s refused: rate limit (retry in %ss).", page.pk, wait)
        return render_limited(request, page, wait)
    if not page.is_purchasable:
        logger.warning("Checkout for page %s refused: the product has no files.", page.pk)
        return render_unavailable(request, page, status=409)
    try:
        started = checkout_rules.start_checkout(
            page,
            user=getattr(request, "user", None),
            bound_ids=binding.bound_purchase_ids(request),
            nonce=posted_nonce(request),
            cookie=binding.cookie_fingerprint(request),
            address=request.META.get("REMOTE_ADDR"),
            language=getattr(request, "LANGUAGE_CODE", ""),
        )
    except checkout_rules.CheckoutUnavailable:
        return render_unavailable(request, page, status=503)
    response = see_other(started.url)
    add_never_cache_headers(response)
    binding.bind_purchase(request, response, started.purchase.public_id)
    return response
