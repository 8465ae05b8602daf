"""The buyer's library: whose purchases it lists, and a way in by email alone.

Two ways in, and what each proves:

- **A Django login.** The user's own purchases (``Purchase.user``). Their ``user.email`` counts
  only when the site says its accounts' addresses are verified (``LIBRARY_MATCH_EMAIL``):
  an address typed at sign-up proves nothing, and would otherwise open a stranger's purchases.
- **A one-time sign-in link, emailed** (no password). The buyer enters an address; if it ever
  bought (paid, refunded, revoked or disputed), the outbox sends it a link (``LibrarySignIn``:
  256 random bits, only the SHA-256 kept, ``LIBRARY_SIGN_IN_LIFETIME``, used once). Using it
  proves the buyer reads that mailbox, the same proof every delivery email already relies on,
  so the library session lists every purchase made with that address, whoever's account it
  is on. Opening the link (GET) changes nothing, since mail scanners open links; its page's
  button (POST) spends it.

Addresses match case-insensitively (``email__iexact``), as resend and ``LIBRARY_MATCH_EMAIL``
do: the part before "@" is case-sensitive on paper, but no mail provider in use treats it so,
and buyers type their address in whatever case they like.

The library session is one key in Django's session (:data:`SESSION_KEY`), holding a value
signed with its own salt: the proven address and its expiry (``LIBRARY_SESSION_LIFETIME``).
It is not a login. Only the library views and ``access.owns`` (content for a product's buyers)
read it, so it opens nothing else on the site. The
session key is cycled when it is opened (no fixation), and signing out removes it.

A signed-in user who uses a sign-in link also gets that address's guest purchases (those on no
account) attached to their account (:func:`claim_purchases`): "bought before I had an account".
The confirmation page says so before the button is pressed.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core import signing
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables

from . import links
from .conf import app_settings
from .models import LibrarySignIn, Purchase

#: The session key holding the library's signed value; nothing else reads it.
SESSION_KEY = "wagtail_paid_delivery.library"
#: Salt of that value: a value signed for any other purpose does not open the library.
SESSION_SALT = "wagtail_paid_delivery.library.session"

#: A sign-in token: ``secrets.token_urlsafe(32)``, like a download token.
TOKEN_RE = links.TOKEN_RE

#: What the library says of a purchase that has no button (it was paid once, but is not now).
STATUS_NOTES: dict[str, Any] = {
    Purchase.Status.REFUNDED: _("Refunded: no longer available to download."),
    Purchase.Status.REVOKED: _("Access ended by the shop."),
    Purchase.Status.DISPUTED: _("Suspended while a payment dispute is open."),
}


class InvalidSignIn(Exception):
    """Unknown, malformed, used or expired: the buyer is told the same for each."""


@dataclass(frozen=True)
class IssuedSignIn:
    """A new sign-in link and its raw token; the token exists nowhere else."""

    sign_in: LibrarySignIn
    token: str
    url: str


# What a library lists ---------------------------------------------------------------------------


def listed(match: Q) -> QuerySet[Purchase]:
    """Purchases matching ``match`` that were ever paid (paid now, or refunded, revoked or
    disputed since), newest first. Only the paid ones get a button."""
    return (
        Purchase.objects.filter(match, paid_at__isnull=False)
        .select_related("product", "license_key", "bundle")
        .order_by("-paid_at", "-pk")
    )


def address_purchases(address: str) -> QuerySet[Purchase]:
    """The listed purchases made with ``address`` (any case)."""
    return listed(Q(email__iexact=address.strip()))


def library_purchases(user: Any = None, email: str | None = None) -> QuerySet[Purchase]:
    """What the library lists for a signed-in ``user`` and/or a proven ``email``."""
    matches = []
    if user is not None and user.is_authenticated:
        matches.append(Q(user_id=user.pk))
        user_email = (getattr(user, "email", "") or "").strip()
        if app_settings.LIBRARY_MATCH_EMAIL and user_email:
            matches.append(Q(email__iexact=user_email))
    if email:
        matches.append(Q(email__iexact=email))
    if not matches:
        return Purchase.objects.none()
    match = matches[0]
    for more in matches[1:]:
        match |= more
    return listed(match)


def claim_purchases(user: Any, email: str) -> int:
    """Attach the guest purchases of a proven ``email`` to ``user``; how many.

    Only purchases on no account: one already on another account stays there (its buyer's
    address opens it in the library anyway).
    """
    guest = address_purchases(email).filter(user__isnull=True)
    return guest.update(user=user, updated_at=timezone.now())


def status_note(purchase: Purchase) -> str:
    """Why a listed purchase has no button ("" when it is paid)."""
    note = STATUS_NOTES.get(str(purchase.status))
    return str(note) if note is not None else ""


# Sign-in links ----------------------------------------------------------------------------------


@sensitive_variables("raw")
def issue_sign_in(
    address: str, *, purchase: Purchase | None = None, now: datetime | None = None
) -> IssuedSignIn:
    """A new one-time sign-in link for ``address``; ``purchase`` picks the site its URL is on."""
    now = now or timezone.now()
    raw = secrets.token_urlsafe(32)
    sign_in = LibrarySignIn.objects.create(
        token_hash=links.hash_token(raw),
        email=address,
        created_at=now,
        expires_at=now + app_settings.library_sign_in_lifetime,
    )
    path = reverse("wagtail_paid_delivery:library_sign_in", args=[raw])
    return IssuedSignIn(sign_in=sign_in, token=raw, url=f"{links.site_root_url(purchase)}{path}")


def discard_sign_ins(issued: list[IssuedSignIn]) -> None:
    """A failed email's sign-in links must open nothing for whoever reads a copy of it."""
    LibrarySignIn.objects.filter(pk__in=[one.sign_in.pk for one in issued]).delete()


def _usable(raw: str, now: datetime) -> QuerySet[LibrarySignIn]:
    if not isinstance(raw, str) or not TOKEN_RE.match(raw):
        return LibrarySignIn.objects.none()
    return LibrarySignIn.objects.filter(
        token_hash=links.hash_token(raw), used_at__isnull=True, expires_at__gt=now
    )


@sensitive_variables("raw")
def check_sign_in(raw: str, *, now: datetime | None = None) -> LibrarySignIn:
    """The usable sign-in for ``raw``, changing nothing (the GET a mail scanner makes)."""
    found = _usable(raw, now or timezone.now()).first()
    if found is None:
        raise InvalidSignIn
    return found


@sensitive_variables("raw")
def use_sign_in(raw: str, *, now: datetime | None = None) -> str:
    """Spend the sign-in ``raw``; returns the address it proves.

    One conditional UPDATE: of two requests with the same token, in parallel or one after the
    other, exactly one gets the address.
    """
    now = now or timezone.now()
    usable = _usable(raw, now)
    found = usable.first()
    if found is None or not usable.filter(pk=found.pk).update(used_at=now):
        raise InvalidSignIn
    return found.email


# The library session ----------------------------------------------------------------------------


def open_session(request: HttpRequest, email: str, *, now: datetime | None = None) -> None:
    """Open the library for ``email`` in this browser (a new session key: no fixation)."""
    now = now or timezone.now()
    expires = now + app_settings.library_session_lifetime
    value = signing.dumps({"e": email, "x": int(expires.timestamp())}, salt=SESSION_SALT)
    request.session.cycle_key()
    request.session[SESSION_KEY] = value


def session_email(request: HttpRequest) -> str | None:
    """The address this browser proved, while its library session lasts; else None."""
    session = getattr(request, "session", None)
    value = session.get(SESSION_KEY) if session is not None else None
    if not isinstance(value, str):
        return None
    max_age = app_settings.library_session_lifetime
    try:
        data = signing.loads(value, salt=SESSION_SALT, max_age=max_age)
        email, expires = str(data["e"]), int(data["x"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    if expires <= timezone.now().timestamp() or not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        return None
    return email


def close_session(request: HttpRequest) -> None:
    """Sign out of the library (a Django login, if any, stays)."""
    request.session.pop(SESSION_KEY, None)
