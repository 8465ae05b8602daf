"""The signed cookie that binds a browser to the checkouts it started.

The success page shows a purchase's status only to the browser that started its checkout; any
other visitor (a forwarded link, a guessed session id) reads the neutral "check your email" copy.
The cookie also lets a double-submitted Buy button reuse the open purchase instead of starting a
second one. It is signed (``django.core.signing``), HttpOnly, SameSite=Lax (it must survive the
top-level redirect back from Stripe) and Secure on HTTPS, and its path is limited to this app's
URLs, so it never reaches (and never busts) front-end-cached site pages.

The value is a small JSON object so later features can carry more than purchase ids. It holds
no download token: the success page's link is derived on the server (``links.success_page_link``).
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any

from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

COOKIE_NAME = "wpd_checkout"
SALT = "wagtail_paid_delivery.binding"
#: How long a browser stays bound. Checkout Sessions expire after 24 hours; a day more of slack
#: covers a buyer who returns to the success page late.
MAX_AGE = timedelta(days=2)
#: Open purchases remembered per browser; the oldest are forgotten first.
MAX_PURCHASES = 10


def cookie_path() -> str:
    """This app's URL prefix (``/shop/`` when mounted there), so site pages never get the cookie."""
    urls = [
        reverse("wagtail_paid_delivery:checkout", args=[1]),
        reverse("wagtail_paid_delivery:success"),
    ]
    prefix = os.path.commonprefix(urls)
    return prefix[: prefix.rfind("/") + 1] or "/"


def load(request: HttpRequest) -> dict[str, Any]:
    """The binding data for this request; empty when missing, tampered with or expired."""
    raw = request.COOKIES.get(COOKIE_NAME)
    if not raw:
        return {}
    try:
        data = signing.loads(raw, salt=SALT, max_age=MAX_AGE)
    except signing.BadSignature:
        return {}
    return data if isinstance(data, dict) else {}


def cookie_fingerprint(request: HttpRequest) -> str | None:
    """A SHA-256 of the exact binding cookie this request carries, when it is one of ours.

    Two POSTs of one click carry the same cookie; a request from anywhere else cannot (it is
    signed and HttpOnly). ``checkout.nonce_key`` scopes the Buy form's nonce with it.
    """
    raw = request.COOKIES.get(COOKIE_NAME)
    if not raw or not load(request):
        return None
    return hashlib.sha256(raw.encode()).hexdigest()


def bound_purchase_ids(request: HttpRequest) -> list[str]:
    """Public ids (strings) of the purchases this browser started, newest first."""
    ids = load(request).get("purchases", [])
    return [str(i) for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def is_bound(request: HttpRequest, public_id: Any) -> bool:
    return str(public_id) in bound_purchase_ids(request)


def save(request: HttpRequest, response: HttpResponse, data: dict[str, Any]) -> None:
    response.set_cookie(
        COOKIE_NAME,
        signing.dumps(data, salt=SALT, compress=True),
        max_age=int(MAX_AGE.total_seconds()),
        path=cookie_path(),
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )


def bind_purchase(request: HttpRequest, response: HttpResponse, public_id: Any) -> None:
    """Remember ``public_id`` for this browser (newest first, at most MAX_PURCHASES)."""
    data = load(request)
    # Earlier builds kept the success page's raw download tokens here ("links"); the success
    # page derives its link on the server now (links.success_page_link): never write them back.
    data.pop("links", None)
    ids = [str(public_id), *(i for i in bound_purchase_ids(request) if i != str(public_id))]
    data["purchases"] = ids[:MAX_PURCHASES]
    save(request, response, data)
