"""The Buy button's target: create (or reuse) a Stripe Checkout Session and 303 the buyer to it.

No CSRF token: product pages are often served from a front-end cache, and a token (or the CSRF
cookie it needs) would either be baked into the cached HTML for every visitor or force the page
to vary per visitor. Instead the view checks the request's Origin (Referer when a browser sends
no Origin) against the site's own origin, which is what Django's CSRF protection also relies on
for HTTPS requests. A cross-site form cannot forge Origin, and all a successful forgery could do
is open a Checkout page for the victim, which they would still have to pay themselves.

Success and cancel URLs come from the Wagtail Site the product belongs to, never from the
request, so a forged Host header cannot send a buyer (and their session id) elsewhere.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import stripe
import swapper
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ImproperlyConfigured
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.http import is_same_domain
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import binding, stripe_api
from ..conf import app_settings
from ..models import Purchase
from ..models.pages import ProductPageMixin
from ..prices import price_problems

logger = logging.getLogger(__name__)

#: An open purchase is reused for a second click only while its Checkout Session is surely
#: still open (sessions expire after 24 hours, and so do Stripe's idempotency keys).
REUSE_WINDOW = timedelta(hours=23)


class HttpResponseSeeOther(HttpResponse):
    """303: the browser follows with a GET, whatever the method of the request was."""

    status_code = 303

    def __init__(self, redirect_to: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self["Location"] = redirect_to


class CheckoutUnavailable(Exception):
    """Checkout cannot start now; the buyer sees the "checkout unavailable" copy (503)."""


@dataclass
class CheckoutStarted:
    purchase: Purchase
    url: str
    reused: bool


# Origin check ---------------------------------------------------------------------------------


def _origin_of(url: str) -> str | None:
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
        return _origin_of(origin) if origin != "null" else None
    referer = request.headers.get("Referer")
    return _origin_of(referer) if referer else None


def origin_allowed(request: HttpRequest, page: Any) -> bool:
    """Whether the POST came from one of this site's own pages.

    Accepted: the product's Wagtail Site root URL, the origin of the request itself (its scheme
    and validated Host, as Django's CSRF check does) and ``CSRF_TRUSTED_ORIGINS``.
    """
    origin = request_origin(request)
    if origin is None:
        return False
    own = {_origin_of(f"{request.scheme}://{request.get_host()}")}
    site = page.get_site()
    if site is not None:
        own.add(_origin_of(site.root_url))
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
        elif _origin_of(trusted) == origin:
            return True
    return False


# The product and its session -----------------------------------------------------------------


def get_purchasable_page(request: HttpRequest, page_id: int) -> Any:
    """The live, specific product page, or 404. Files are checked by the caller."""
    page_model = swapper.load_model("wagtailcore", "Page")
    page = page_model.objects.live().filter(pk=page_id).specific().first()
    # issubclass(type()), not isinstance: the page stays a Page to the type checker too.
    if page is None or not issubclass(type(page), ProductPageMixin):
        raise Http404(_("No product here."))
    # A product behind a password or login is sold only to who may see it.
    for restriction in page.get_view_restrictions():
        if not restriction.accept_request(request):
            raise Http404(_("No product here."))
    if page.get_site() is None:
        # Not reachable on any site: there would be nowhere to send the buyer back to.
        raise Http404(_("No product here."))
    return page


def success_url(page: Any) -> str:
    root = page.get_site().root_url.rstrip("/")
    return f"{root}{reverse('wagtail_paid_delivery:success')}?session_id={{CHECKOUT_SESSION_ID}}"


def checkout_metadata(purchase: Purchase, page: Any) -> dict[str, str]:
    #: Read back by the webhook and fulfillment to tell our sessions from other integrations'.
    return {
        "wpd_installation": app_settings.installation_id,
        "wpd_purchase": str(purchase.public_id),
        "wpd_product": str(page.pk),
    }


def session_params(purchase: Purchase, page: Any, customer_email: str | None) -> dict[str, Any]:
    """The Checkout Session to create for ``purchase``.

    Built from the purchase's snapshot (not the live page), so a second click sends exactly the
    same parameters and Stripe answers its idempotency key with the same session.
    """
    if page.stripe_price_id:
        line_item: dict[str, Any] = {"price": page.stripe_price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": purchase.currency.lower(),
                "unit_amount": purchase.amount,
                "product_data": {"name": purchase.product_title},
            },
            "quantity": 1,
        }
    metadata = checkout_metadata(purchase, page)
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": str(purchase.public_id),
        "metadata": metadata,
        "payment_intent_data": {"metadata": dict(metadata)},
        "success_url": success_url(page),
        "cancel_url": page.get_full_url(),
    }
    if customer_email:
        params["customer_email"] = customer_email
    params.update(checkout_options(metadata))
    return params


def checkout_options(metadata: dict[str, str]) -> dict[str, Any]:
    """Session params for the site's ``CHECKOUT_OPTIONS`` (validated by check E010)."""
    options = app_settings.CHECKOUT_OPTIONS or {}
    params: dict[str, Any] = {}
    if options.get("allow_promotion_codes"):
        params["allow_promotion_codes"] = True
    if options.get("automatic_tax"):
        params["automatic_tax"] = {"enabled": True}
    if options.get("tax_id_collection"):
        params["tax_id_collection"] = {"enabled": True}
    if options.get("invoice_creation"):
        # The invoice carries our metadata too, so invoice.payment_succeeded maps back to us.
        params["invoice_creation"] = {"enabled": True, "invoice_data": {"metadata": metadata}}
    if options.get("locale"):
        params["locale"] = options["locale"]
    if options.get("require_terms"):
        params["consent_collection"] = {"terms_of_service": "required"}
        if options.get("terms_message"):
            params["custom_text"] = {
                "terms_of_service_acceptance": {"message": options["terms_message"]}
            }
    return params


def idempotency_key(purchase: Purchase) -> str:
    return f"wpd-checkout-{purchase.public_id}"


def check_stripe_price(page: Any) -> None:
    """Refuse to sell through a Stripe Price that no longer matches the page's price."""
    try:
        price = stripe_api.retrieve_price(page.stripe_price_id)
    except stripe_api.StripeUnavailable as exc:
        raise CheckoutUnavailable(f"Stripe unavailable checking {page.stripe_price_id}") from exc
    except stripe.StripeError as exc:
        logger.error(
            "Product %s (page %s): Stripe refused Price %s: %s",
            page.title,
            page.pk,
            page.stripe_price_id,
            exc,
        )
        raise CheckoutUnavailable(f"Price {page.stripe_price_id} refused") from exc
    problems = price_problems(price, page.price_amount, page.currency)
    if problems:
        logger.error(
            "Product %s (page %s): Stripe Price %s does not match the page: %s. Checkout refused.",
            page.title,
            page.pk,
            page.stripe_price_id,
            " ".join(str(problem) for problem in problems),
        )
        raise CheckoutUnavailable(f"Price {page.stripe_price_id} does not match")


def find_open_purchase(request: HttpRequest, page: Any) -> Purchase | None:
    """This browser's open purchase of ``page`` at today's price, for a repeated click."""
    ids = []
    for value in binding.bound_purchase_ids(request):
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    if not ids:
        return None
    return (
        Purchase.objects.filter(
            public_id__in=ids,
            product_id=page.pk,
            source=Purchase.Source.CHECKOUT,
            status=Purchase.Status.PENDING,
            amount=page.price_amount,
            currency=page.currency,
            created_at__gte=timezone.now() - REUSE_WINDOW,
        )
        .exclude(stripe_checkout_session_id=None)
        .order_by("-created_at")
        .first()
    )


def _customer_email(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return getattr(user, "email", "") or None
    return None


def _create_session(purchase: Purchase, page: Any, email: str | None) -> Any:
    return stripe_api.create_checkout_session(
        session_params(purchase, page, email), idempotency_key=idempotency_key(purchase)
    )


def start_checkout(request: HttpRequest, page: Any) -> CheckoutStarted:
    """Create (or reuse this browser's) pending Purchase and its Checkout Session.

    Raises ``CheckoutUnavailable``; a Purchase created here is then marked ``failed`` with the
    reason, so nothing is left pending without a session.
    """
    if page.stripe_price_id:
        check_stripe_price(page)
    email = _customer_email(request)

    open_purchase = find_open_purchase(request, page)
    if open_purchase is not None:
        try:
            session = _create_session(open_purchase, page, email)
        except (stripe_api.StripeUnavailable, stripe.StripeError, ImproperlyConfigured) as exc:
            # The earlier session may well still be payable: leave that purchase alone and
            # start afresh (a changed e-mail makes Stripe refuse the replayed key, for one).
            logger.warning("Could not reuse purchase %s: %s", open_purchase.public_id, exc)
        else:
            if session.id == open_purchase.stripe_checkout_session_id and session.url:
                return CheckoutStarted(open_purchase, session.url, reused=True)

    user = getattr(request, "user", None)
    purchase = Purchase.objects.create(
        product=page,
        product_title=page.title[:255],
        amount=page.price_amount,
        currency=page.currency,
        user=user if user is not None and user.is_authenticated else None,
        source=Purchase.Source.CHECKOUT,
        status=Purchase.Status.PENDING,
    )
    try:
        session = _create_session(purchase, page, email)
        if not session.url:
            raise CheckoutUnavailable(f"Checkout Session {session.id} has no url")
    except (
        stripe_api.StripeUnavailable,
        stripe.StripeError,
        ImproperlyConfigured,
        CheckoutUnavailable,
    ) as exc:
        logger.error(
            "Checkout for product %s (page %s) failed; purchase %s marked failed: %s",
            page.title,
            page.pk,
            purchase.public_id,
            exc,
            exc_info=not isinstance(exc, stripe_api.StripeUnavailable),
        )
        Purchase.objects.filter(pk=purchase.pk).update(
            status=Purchase.Status.FAILED,
            failed_at=timezone.now(),
            status_reason=f"Checkout Session could not be created: {exc}"[:2000],
            updated_at=timezone.now(),
        )
        raise CheckoutUnavailable(str(exc)) from exc
    purchase.stripe_checkout_session_id = session.id
    purchase.livemode = bool(getattr(session, "livemode", False))
    purchase.save(update_fields=["stripe_checkout_session_id", "livemode", "updated_at"])
    return CheckoutStarted(purchase, session.url, reused=False)


# The view -------------------------------------------------------------------------------------


def render_unavailable(request: HttpRequest, page: Any, *, status: int) -> HttpResponse:
    copy = page.get_delivery_copy()
    response = render(
        request,
        "wagtail_paid_delivery/checkout_unavailable.html",
        {
            "page": page,
            "copy": copy,
            "title": copy.render_text("checkout_unavailable_title", product=page.title),
            "message": copy.render("checkout_unavailable_message", product=page.title),
        },
        status=status,
    )
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
    if not page.is_purchasable:
        logger.warning("Checkout for page %s refused: the product has no files.", page.pk)
        return render_unavailable(request, page, status=409)
    try:
        started = start_checkout(request, page)
    except CheckoutUnavailable:
        return render_unavailable(request, page, status=503)
    response = HttpResponseSeeOther(started.url)
    add_never_cache_headers(response)
    binding.bind_purchase(request, response, started.purchase.public_id)
    return response
