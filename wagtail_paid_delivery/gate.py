"""What a page for buyers only answers, and the headers that keep it out of shared caches.

``before_serve_page`` (registered in ``wagtail_hooks``) asks ``access.check``:

- no restriction covers the page: nothing to do;
- the visitor owns the product(s): Wagtail serves the page as usual (its own privacy still
  applies), marked private;
- otherwise the product's page, with its buy button and a line saying this page is for its
  buyers (403, ``no-store``); a restriction whose product was deleted, or whose product is not
  live, answers a short "not available" page instead (403), and editors of the page read why.

It fails closed: any error while deciding or answering gives a "not available" page (503) and
is logged; the restricted page is never served on an error.

``on_serve_page`` wraps every page's serving (``private_responses``): a page that was
restricted, or that rendered a ``BuyersOnlyBlock`` (``mark_private``), leaves with
``Cache-Control: private`` and ``Vary: Cookie``, so no shared cache (a CDN, Django's cache
middleware) keeps one visitor's answer for another.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import patch_cache_control, patch_vary_headers

from . import access
from .models import ProductPageMixin

logger = logging.getLogger(__name__)

#: Set on a request whose page must not be kept by a shared cache.
PRIVATE_ATTR = "_paid_delivery_private"
UNAVAILABLE_TEMPLATE = "wagtail_paid_delivery/buyers_only_unavailable.html"


def mark_private(request: HttpRequest | None) -> None:
    """This request's page shows something that depends on who asks."""
    if request is not None:
        setattr(request, PRIVATE_ATTR, True)


def is_marked_private(request: HttpRequest) -> bool:
    return bool(getattr(request, PRIVATE_ATTR, False))


def make_private(response: HttpResponse, *, no_store: bool = False) -> None:
    """``Cache-Control: private`` (drops ``public``), optionally ``no-store``; ``Vary: Cookie``."""
    if no_store:
        patch_cache_control(response, private=True, no_store=True, max_age=0)
    else:
        patch_cache_control(response, private=True)
    patch_vary_headers(response, ["Cookie"])


# before_serve_page --------------------------------------------------------------------------------


def before_serve_page(page: Any, request: HttpRequest, args: Any, kwargs: Any) -> Any:
    """The hook: None to let Wagtail serve the page, else the answer for a visitor who may not."""
    try:
        verdict = access.check(request, page)
        if verdict is None:
            return None
        mark_private(request)
        if verdict.allowed or _wagtail_privacy_answers(page, request):
            return None
        return refusal(request, page, verdict)
    except Exception:
        # Fail closed: whatever broke, the page itself is not served.
        logger.exception(
            "Buyers-only check failed for page %s; not served", getattr(page, "pk", None)
        )
        return unavailable(request, page, status=503)


def _wagtail_privacy_answers(page: Any, request: HttpRequest) -> bool:
    """The page's own privacy refuses this request: Wagtail's answer (log in, password) comes
    first, as if our restriction were checked after it."""
    return any(not r.accept_request(request) for r in page.get_view_restrictions())


def refusal(request: HttpRequest, page: Any, verdict: access.Verdict) -> HttpResponse:
    """The product's page with a "for buyers of" line; or "not available"."""
    restriction = verdict.refused_by
    product = restriction.product.specific if restriction and restriction.product else None
    if (
        product is None
        or not isinstance(product, ProductPageMixin)
        or not product.live  # type: ignore[attr-defined]
        or _wagtail_privacy_answers(product, request)
    ):
        return unavailable(request, page, status=403, product=product)
    context = product.get_context(request)  # type: ignore[attr-defined]
    context["buyers_only"] = {
        "product": product,
        "signed_in": access.is_signed_in(request),
        "library_url": reverse("wagtail_paid_delivery:library"),
    }
    template = product.get_template(request)  # type: ignore[attr-defined]
    response = TemplateResponse(request, template, context, status=403)
    make_private(response, no_store=True)
    response.render()  # here, inside the hook's try: a template error fails closed too
    return response


def unavailable(
    request: HttpRequest, page: Any, *, status: int, product: Any = None
) -> HttpResponse:
    """A restricted page nobody may see now; an editor of the page is told why and where to fix
    it. Rendered plainly if even that fails."""
    context = {"product": product, "editor_url": _editor_url(request, page)}
    try:
        response: HttpResponse = TemplateResponse(
            request, UNAVAILABLE_TEMPLATE, context, status=status
        ).render()
    except Exception:
        logger.exception("Buyers-only 'not available' page failed to render")
        response = HttpResponse("Not available.", status=status, content_type="text/plain")
    make_private(response, no_store=True)
    return response


def _editor_url(request: HttpRequest, page: Any) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or getattr(page, "pk", None) is None:
        return None
    try:
        if not page.permissions_for_user(user).can_set_view_restrictions():
            return None
        return reverse("wagtail_paid_delivery_admin:buyers_only", args=[page.pk])
    except Exception:
        return None


# on_serve_page --------------------------------------------------------------------------------


def private_responses(serve: Any) -> Any:
    """The ``on_serve_page`` wrapper: private headers on pages marked private, also when a block
    marks the request while its template renders (after this returns)."""

    def inner(page: Any, request: HttpRequest, args: Any, kwargs: Any) -> Any:
        response = serve(page, request, args, kwargs)
        if is_marked_private(request):
            make_private(response, no_store=True)
        elif isinstance(response, TemplateResponse) and not response.is_rendered:
            response.add_post_render_callback(
                lambda rendered: _private_if_marked(request, rendered)
            )
        return response

    return inner


def _private_if_marked(request: HttpRequest, response: HttpResponse) -> None:
    if is_marked_private(request):
        make_private(response)
