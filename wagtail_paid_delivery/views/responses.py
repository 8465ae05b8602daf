"""Answers every buyer view shares: the delivery pages' headers, 303s and a plain 404."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.http.response import HttpResponseBase

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


def see_other(url: str) -> HttpResponse:
    """303: the browser follows with a GET, whatever the method of the request was."""
    response = HttpResponse(status=303)
    response["Location"] = url
    return response


def not_found() -> HttpResponse:
    """The same plain answer for every unknown, malformed or mismatched token: nothing to learn."""
    return HttpResponseNotFound(NOT_FOUND_BODY)
