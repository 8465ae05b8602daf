"""The buyer's download page, its buttons, and the hand-off URL that serves the bytes.

``d/<token>/`` (GET) only shows: mail scanners open emailed links, so nothing a GET does may
change anything. The button POSTs to ``d/<token>/<file id>/`` and is answered with a 303 to a
signed hand-off URL, where :mod:`..serving` counts and streams the file.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.utils import formats, timezone
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST, require_safe

from .. import serving, tokens
from ..models import DeliveryCopy, DownloadLink

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


def _delivery_headers(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        for name, value in PAGE_HEADERS.items():
            # File responses set their own (Referrer-Policy: no-referrer) and keep them.
            response.setdefault(name, value)
        return response

    return wrapper


def _not_found() -> HttpResponse:
    # The same plain answer for every unknown, malformed or mismatched token: nothing to learn.
    return HttpResponseNotFound(NOT_FOUND_BODY)


def _copy(link: DownloadLink) -> DeliveryCopy:
    product = tokens._product(link.purchase)
    return product.get_delivery_copy() if product else DeliveryCopy.objects.get_default()


def _placeholders(link: DownloadLink, downloads_left: int | None) -> dict[str, Any]:
    expires = formats.date_format(timezone.localtime(link.expires_at), "DATETIME_FORMAT")
    return {
        "product": link.purchase.product_title,
        "email": link.purchase.email,
        "expires": expires,
        "downloads_left": tokens.UNLIMITED if downloads_left is None else downloads_left,
    }


def refused_context(error: tokens.LinkRefused, copy: DeliveryCopy) -> dict[str, Any]:
    """The context of ``download_refused.html`` (also built by the admin preview)."""
    link = error.link
    return {
        "link": link,
        "reason": error.reason,
        "product_title": link.purchase.product_title,
        "message": copy.render(error.copy_field, **_placeholders(link, None)),
    }


def page_context(
    link: DownloadLink, token: str, files: list[dict[str, Any]], copy: DeliveryCopy
) -> dict[str, Any]:
    """The context of ``download.html``; ``files`` are ``{"file", "left"}`` items."""
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
        "intro": copy.render("download_intro", **_placeholders(link, left)),
    }


def _refused(request: HttpRequest, error: tokens.LinkRefused) -> TemplateResponse:
    context = refused_context(error, _copy(error.link))
    return TemplateResponse(
        request, "wagtail_paid_delivery/download_refused.html", context, status=410
    )


def _unavailable(request: HttpRequest, link: DownloadLink) -> TemplateResponse:
    context = {"link": link, "product_title": link.purchase.product_title}
    return TemplateResponse(
        request, "wagtail_paid_delivery/download_unavailable.html", context, status=503
    )


@login_not_required  # a buyer holds a link, not an account
@require_safe
@_delivery_headers
@sensitive_variables("token")  # kept out of error reports, with check_token's
def download(request: HttpRequest, token: str) -> HttpResponseBase:
    """The download page: the product's files and what is left of the link. Changes nothing."""
    try:
        link = tokens.check_token(token)
    except tokens.LinkRefused as error:
        return _refused(request, error)
    except tokens.LinkError:
        return _not_found()

    counts = tokens.file_counts(link)
    product_files = tokens.product_files(link)
    lefts = [tokens.downloads_left(link, counts.get(f.pk, 0)) for f in product_files]
    files = [{"file": f, "left": left} for f, left in zip(product_files, lefts, strict=True)]
    if product_files and all(left == 0 for left in lefts):
        return _refused(request, tokens.LinkUsedUp(link))
    context = page_context(link, token, files, _copy(link))
    return TemplateResponse(request, "wagtail_paid_delivery/download.html", context)


@login_not_required  # a buyer holds a link, not an account
@require_POST
@_delivery_headers
@sensitive_variables("token")
def download_file(request: HttpRequest, token: str, file_id: int) -> HttpResponseBase:
    """The download button: check the link and the file, then 303 to a fresh hand-off URL."""
    try:
        link = tokens.check_token(token)
    except tokens.LinkRefused as error:
        return _refused(request, error)
    except tokens.LinkError:
        return _not_found()
    file = tokens.get_product_file(link, file_id)
    if file is None:
        return _not_found()
    left = tokens.downloads_left(link, tokens.file_counts(link).get(file.pk, 0))
    if left == 0:
        return _refused(request, tokens.LinkUsedUp(link))
    response = HttpResponseRedirect(serving.handoff_url(link, file))
    response.status_code = 303
    return response


@login_not_required  # a buyer holds a link, not an account
@require_safe
@_delivery_headers
@sensitive_variables("signed")
def handoff(request: HttpRequest, signed: str) -> HttpResponseBase:
    """The bytes: GET and HEAD with Range, counted as DESIGN "Downloads: what counts" says."""
    try:
        ticket = serving.read_handoff(signed)
    except serving.BadHandoff:
        serving.record_event(request, link=None, file_id=None, outcome="invalid")
        return _not_found()
    link = DownloadLink.objects.select_related("purchase").filter(pk=ticket.link_id).first()
    if link is None:
        serving.record_event(request, link=None, file_id=None, outcome="invalid")
        return _not_found()

    def refuse(error: tokens.LinkRefused) -> HttpResponseBase:
        serving.record_event(
            request, link=link, file_id=ticket.file_id, outcome=error.reason, handoff=ticket.nonce
        )
        return _refused(request, error)

    try:
        tokens.check_link(link)
    except tokens.LinkRefused as error:
        return refuse(error)
    file = tokens.get_product_file(link, ticket.file_id)
    if file is None:
        serving.record_event(
            request, link=link, file_id=ticket.file_id, outcome="invalid", handoff=ticket.nonce
        )
        return _not_found()
    try:
        return serving.serve_file(request, link, file, ticket)
    except tokens.LinkUsedUp as error:
        return refuse(error)
    except serving.FileUnavailable:
        serving.record_event(
            request, link=link, file_id=file.pk, outcome="missing_file", handoff=ticket.nonce
        )
        return _unavailable(request, link)
