"""Answers every buyer view shares: the delivery pages' headers, their CSP, 303s and a plain 404."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse

from .. import languages
from ..conf import app_settings
from ..models import Purchase

#: Headers on every delivery page. ``same-origin``, not ``no-referrer``: with no referrer,
#: browsers send ``Origin: null`` on the button's POST and Django's CSRF check refuses it.
PAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

NOT_FOUND_BODY = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Not Found</title></head>"
    "<body><h1>Not Found</h1></body></html>"
)


def delivery_headers(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Per-buyer pages: never cached, never indexed, their URLs never sent to other sites."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        for name, value in PAGE_HEADERS.items():
            # File responses set their own (Referrer-Policy: no-referrer) and keep them.
            response.setdefault(name, value)
        return response

    return wrapper


# Content-Security-Policy of the pages that show a token ------------------------------------------

#: The header's name; a response that already has one (a file response's sandbox) keeps its own.
CSP_HEADER = "Content-Security-Policy"


def csp_nonce(request: HttpRequest) -> str:
    """This response's nonce, made on first use: ``request.csp_nonce`` in templates.

    128 bits from ``secrets``, new for every request, so a nonce seen in one page's source is
    worth nothing on the next.
    """
    nonce = getattr(request, "csp_nonce", None)
    if not isinstance(nonce, str) or not nonce:
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
    return nonce


def _origin(url: str) -> str | None:
    """``url``'s origin as a CSP source; a protocol-relative ``//cdn…/`` gives its host."""
    parts = urlsplit(url or "")
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    if not parts.scheme and parts.netloc:
        return parts.netloc
    return None


def strict_csp_policy(nonce: str, *, form_action: Iterable[str] = ()) -> str:
    """The policy: scripts only with ``nonce``; styles, fonts, images from ``DELIVERY_PAGE_CSP``.

    STATIC_URL's origin is added for styles, fonts and images, and MEDIA_URL's for images, when
    they are another host (a CDN): the site's own files, which its layout needs. ``form_action``
    adds origins a form's redirects may end at (the presigned backend's storage).
    """
    sources = app_settings.delivery_page_csp
    static = _origin(str(settings.STATIC_URL or ""))
    media = _origin(str(settings.MEDIA_URL or ""))
    extra = {
        "style-src": [static, f"'nonce-{nonce}'"],
        "font-src": [static],
        "img-src": [static, media],
    }
    directives = ["default-src 'none'", f"script-src 'nonce-{nonce}'"]
    for directive, listed in sources.items():
        values: list[str] = []
        for value in [*listed, *extra[directive]]:
            if value and value not in values:
                values.append(value)
        directives.append(f"{directive} {' '.join(values)}")
    directives += [
        # The download page's script asks for the page again after a download
        # (download-count.js); only this origin, which already serves the page.
        "connect-src 'self'",
        "base-uri 'none'",
        " ".join(["form-action 'self'", *dict.fromkeys(form_action)]),
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


def add_strict_csp(
    request: HttpRequest, response: HttpResponseBase, *, form_action: Iterable[str] = ()
) -> HttpResponseBase:
    """Give ``response`` the strict policy with this request's nonce, unless it has a CSP."""
    if CSP_HEADER not in response:
        response[CSP_HEADER] = strict_csp_policy(csp_nonce(request), form_action=form_action)
    return response


def strict_csp(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Pages that show a token: no script runs unless it carries this response's nonce.

    The address bar of these pages holds the buyer's entitlement, and any script on the page
    (a site's analytics, a tag manager, an injected ad) could read it from ``location``. The
    nonce is made before the view renders, so templates (ours and the site's base template)
    put ``nonce="{{ request.csp_nonce }}"`` on the inline styles and scripts they trust. A
    response that already has a policy keeps it (file responses are sandboxed; a view that
    needs more sets its own with :func:`add_strict_csp`).
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        csp_nonce(request)
        return add_strict_csp(request, view(request, *args, **kwargs))

    return wrapper


def see_other(url: str) -> HttpResponse:
    """303: the browser follows with a GET, whatever the method of the request was."""
    response = HttpResponse(status=303)
    response["Location"] = url
    return response


def not_found() -> HttpResponse:
    """The same plain answer for every unknown, malformed or mismatched token: nothing to learn."""
    return HttpResponseNotFound(NOT_FOUND_BODY)


def render_for(
    request: HttpRequest,
    purchase: Purchase,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> TemplateResponse:
    """A page about ``purchase`` in its buyer's language (``languages``), rendered now.

    A link's page may be opened anywhere (another browser, a forwarded email), so it speaks the
    language the buyer checked out in, not the one this request asked for.
    """
    with languages.speaking(purchase.language) as language:
        response = TemplateResponse(request, template, context, status=status)
        response.render()
    response["Content-Language"] = language
    return response
