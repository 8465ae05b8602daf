"""Download links: issue, check and revoke them; sign hand-offs; count downloads per file.

A link's raw token (256 random bits, ``secrets.token_urlsafe(32)``) leaves this module once, in
the URL :func:`issue_link` builds; the database keeps only its SHA-256. Checking a token is one
indexed lookup on that hash. The success page's link is the one exception to "random": its token
is derived from the server's secret and the purchase (:func:`success_page_link`), so every
request of the buyer's browser, in any order and at once, arrives at the same single row.

A link is usable only while its purchase is ``paid``, checked at every use: a disputed purchase's
links pause and work again when the dispute is won, with no new links. Only an editor's revoke
(:func:`revoke_link`) or the purchase's own final states (refunded, revoked) end a link for good.

A download starts with the page's button, which is answered with a *hand-off*: a signed URL
naming one link and one file, new for every press. What a request on a hand-off counts is decided
here (:func:`reserve_download`, :func:`release_download`); see docs/architecture.md, "What counts
as a download". Every request for bytes leaves a :class:`DownloadEvent` (:func:`record_event`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables
from wagtail.models import Site

from .conf import app_settings
from .models import DownloadEvent, DownloadHandoff, DownloadLink, FileDownloadCount, Purchase
from .models.pages import AbstractProductFile, product_file_models

#: ``secrets.token_urlsafe(32)``: 43 characters of the URL-safe base64 alphabet.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
#: Human words for the unlimited case, used where a number of downloads is shown.
UNLIMITED = _("unlimited")
HANDOFF_SALT = "wagtail_paid_delivery.handoff"
#: Key salt of the success page's token (:func:`success_page_tokens`).
SUCCESS_LINK_SALT = "wagtail_paid_delivery.success_link"


class LinkError(Exception):
    """Base of every reason a token does not open a download."""

    #: HTTP status a view answers with.
    status_code = 404
    #: Stable short code, stored as ``DownloadEvent.outcome``.
    reason = "invalid"


class InvalidToken(LinkError):
    """Unknown or malformed token: answered with a plain 404 that reveals nothing."""


class LinkRefused(LinkError):
    """A real link that does not work (now, or any more): answered with 410 and the reason."""

    status_code = 410
    #: The DeliveryCopy field that explains it to the buyer.
    copy_field = "revoked_message"

    def __init__(self, link: DownloadLink, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.link = link


class LinkExpired(LinkRefused):
    reason = "expired"
    copy_field = "expired_message"


class LinkUsedUp(LinkRefused):
    reason = "used_up"
    copy_field = "used_up_message"


class LinkRevoked(LinkRefused):
    reason = "revoked"
    copy_field = "revoked_message"


class PurchaseNotPaid(LinkRefused):
    """The purchase is refunded, revoked or disputed (suspended: it may come back)."""

    reason = "not_paid"
    copy_field = "revoked_message"


class CannotIssueLink(Exception):
    """Links are issued only for paid purchases."""


@dataclass(frozen=True)
class IssuedLink:
    """A new link and its raw token; the token exists nowhere else."""

    link: DownloadLink
    token: str
    url: str


@sensitive_variables("raw")
def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


class Rule(Enum):
    """``issue_link``'s default for lifetime and limit: the product's rule, else the site's."""

    PRODUCT = "product"


def link_rules(purchase: Purchase) -> tuple[timedelta, int | None]:
    """The lifetime and per-file download limit (None: unlimited) a new link of ``purchase``
    gets: the product's own, else the site's (also when the product page is gone)."""
    product = purchase.product_page
    if product is not None:
        return product.get_link_lifetime(), product.get_download_limit()
    return app_settings.link_lifetime, app_settings.DOWNLOAD_LIMIT


def issue_link(
    purchase: Purchase,
    *,
    reason: str,
    now: datetime | None = None,
    lifetime: timedelta | Literal[Rule.PRODUCT] = Rule.PRODUCT,
    download_limit: int | None | Literal[Rule.PRODUCT] = Rule.PRODUCT,
) -> IssuedLink:
    """A new download link for a paid purchase.

    ``lifetime`` and ``download_limit`` (per file; None: unlimited) default to the product's
    rules (``link_rules``); the shop desk passes an editor's choice.
    """
    if purchase.status != Purchase.Status.PAID:
        raise CannotIssueLink(f"Purchase {purchase.pk} is {purchase.status}, not paid.")
    default_lifetime, default_limit = link_rules(purchase)
    raw = secrets.token_urlsafe(32)
    link = _create_link(
        purchase,
        raw,
        reason=reason,
        now=now or timezone.now(),
        lifetime=default_lifetime if lifetime is Rule.PRODUCT else lifetime,
        limit=default_limit if download_limit is Rule.PRODUCT else download_limit,
    )
    return IssuedLink(link=link, token=raw, url=download_page_url(raw, purchase=purchase))


@sensitive_variables("raw")
def _create_link(
    purchase: Purchase,
    raw: str,
    *,
    reason: str,
    now: datetime,
    lifetime: timedelta,
    limit: int | None,
) -> DownloadLink:
    link = DownloadLink.objects.create(
        purchase=purchase,
        token_hash=hash_token(raw),
        reason=reason,
        created_at=now,
        expires_at=now + lifetime,
        download_limit=limit or None,
    )
    link.purchase = purchase
    return link


def check_link(link: DownloadLink, *, now: datetime | None = None) -> DownloadLink:
    """Raise the reason ``link`` does not work now; return it when it does.

    Order matters for the buyer's message: a revoked link says so even after it expired.
    """
    now = now or timezone.now()
    if link.revoked_at is not None:
        raise LinkRevoked(link)
    status = link.purchase.status
    if status in (Purchase.Status.REFUNDED, Purchase.Status.REVOKED):
        raise LinkRevoked(link)
    if status != Purchase.Status.PAID:
        raise PurchaseNotPaid(link)
    if link.expires_at <= now:
        raise LinkExpired(link)
    return link


@sensitive_variables("raw")
def check_token(raw: str, *, now: datetime | None = None) -> DownloadLink:
    """The usable link for a raw token, in one indexed query, or a :class:`LinkError`."""
    link = find_link(raw)
    if link is None:
        raise InvalidToken
    return check_link(link, now=now)


@sensitive_variables("raw")
def find_link(raw: Any) -> DownloadLink | None:
    """The link a raw token names, in whatever state (expired, used up, revoked), or None."""
    if not isinstance(raw, str) or not TOKEN_RE.match(raw):
        return None
    return (
        DownloadLink.objects.select_related("purchase").filter(token_hash=hash_token(raw)).first()
    )


def revoke_link(link: DownloadLink, *, now: datetime | None = None) -> None:
    """End a link for good (an editor's decision). Revoking twice keeps the first time."""
    now = now or timezone.now()
    DownloadLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=now)
    link.refresh_from_db(fields=["revoked_at"])


@sensitive_variables("raw")
def rekey_link(link: DownloadLink) -> IssuedLink | None:
    """A new token for ``link``; the old one stops working. Its expiry, limit and counts stay.

    None when the link was revoked meanwhile. The email outbox sends a link an editor issued
    this way at every attempt, and discards a failed attempt's token by rekeying again.
    """
    raw = secrets.token_urlsafe(32)
    digest = hash_token(raw)
    if not DownloadLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(
        token_hash=digest
    ):
        return None
    link.token_hash = digest
    return IssuedLink(link=link, token=raw, url=download_page_url(raw, purchase=link.purchase))


def file_counts(link: DownloadLink) -> dict[int, int]:
    """Downloads counted so far on ``link``, per file id."""
    return dict(FileDownloadCount.objects.filter(link=link).values_list("file_id", "count"))


def downloads_left(link: DownloadLink, count: int) -> int | None:
    """What is left of the per-file limit after ``count`` downloads; None: unlimited."""
    if link.download_limit is None:
        return None
    return max(link.download_limit - count, 0)


def product_files(link: DownloadLink) -> list[AbstractProductFile]:
    """The files of the link's product, in the editor's order (none if the page is gone)."""
    product = link.purchase.product_page
    return list(product.product_files) if product is not None else []


def get_product_file(link: DownloadLink, file_id: int) -> AbstractProductFile | None:
    """The product file ``file_id`` if it belongs to the link's product, else None (one query).

    Product file models are site-defined; each has ``page = ParentalKey(<product page>)``.
    """
    product_id = link.purchase.product_id
    if product_id is None:
        return None
    for model in product_file_models():
        found = model._default_manager.filter(pk=file_id, page_id=product_id).first()
        if found is not None:
            return found  # type: ignore[return-value]
    return None


def download_page_url(raw: str, *, purchase: Purchase | None = None) -> str:
    """The absolute URL of the download page for ``raw``, from the Wagtail Site root
    (:func:`site_root_url`)."""
    path = reverse("wagtail_paid_delivery:download", args=[raw])
    return f"{site_root_url(purchase)}{path}"


def site_root_url(purchase: Purchase | None = None) -> str:
    """The root of the site a buyer's emailed URLs start with, without a trailing slash.

    The product's own site when known, else the default site, else ``WAGTAILADMIN_BASE_URL``.
    """
    root = ""
    if purchase is not None and purchase.product_id:
        site = purchase.product.get_site() if purchase.product else None
        root = site.root_url if site else ""
    if not root:
        site = Site.objects.filter(is_default_site=True).first()
        root = site.root_url if site else getattr(settings, "WAGTAILADMIN_BASE_URL", "")
    return str(root).rstrip("/")


# The success page's link --------------------------------------------------------------------


@sensitive_variables("keys", "key")
def success_page_tokens(purchase: Purchase) -> list[str]:
    """The success page's raw token for ``purchase``: under ``SECRET_KEY`` first, then under each
    of ``SECRET_KEY_FALLBACKS`` (so a link made before a key rotation is still found).

    HMAC-SHA256 keyed with the secret (and :data:`SUCCESS_LINK_SALT`) over the purchase's public
    id, in the shape of a random token (:data:`TOKEN_RE`: 43 URL-safe characters, 256 bits). The
    public id is not secret (it is in the binding cookie and in Stripe's metadata); the secret
    is. One purchase's token says nothing about another's, and nobody without ``SECRET_KEY``
    can compute one (whoever has it can sign hand-offs already).
    """
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [_derive_token(key, str(purchase.public_id)) for key in keys]


@sensitive_variables("secret", "mac")
def _derive_token(secret: str, public_id: str) -> str:
    mac = salted_hmac(SUCCESS_LINK_SALT, public_id, secret=secret, algorithm="sha256")
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


@sensitive_variables("tokens", "by_hash", "raw")
def success_page_link(purchase: Purchase, *, now: datetime | None = None) -> IssuedLink | None:
    """The one link the success page shows for a paid ``purchase``, or None.

    The token is :func:`success_page_tokens`' (not random), so reloads, a replayed cookie and
    parallel requests all find or create the same row: the create is keyed by the token's hash,
    which is unique, and a request that loses the race reads the winner's row. The page never
    mints a second link: once this one expires or is revoked (or the purchase is not paid), the
    answer is None and the buyer gets fresh links by resend or the library. A link made under a
    ``SECRET_KEY`` that is no longer listed (rotated out of the fallbacks) cannot be shown again;
    the next request makes one under the current key: at most one link per secret, and no
    request of the buyer's can make another.
    """
    if purchase.status != Purchase.Status.PAID:
        return None
    now = now or timezone.now()
    tokens = success_page_tokens(purchase)
    by_hash = {hash_token(token): token for token in tokens}
    link = find_success_page_link(purchase, by_hash)
    if link is None:
        link = _create_success_link(purchase, tokens[0], now)
    link.purchase = purchase
    try:
        check_link(link, now=now)
    except LinkError:
        return None
    raw = by_hash[link.token_hash]
    return IssuedLink(link=link, token=raw, url=download_page_url(raw, purchase=purchase))


def find_success_page_link(
    purchase: Purchase, by_hash: dict[str, str] | None = None
) -> DownloadLink | None:
    """The success page's link of ``purchase`` if one was made (under the current secret or a
    fallback); None if the page has not made it yet. Reads only."""
    if by_hash is None:
        by_hash = {hash_token(token): token for token in success_page_tokens(purchase)}
    found = {
        link.token_hash: link
        for link in DownloadLink.objects.filter(purchase=purchase, token_hash__in=by_hash)
    }
    return next((found[h] for h in by_hash if h in found), None)


@sensitive_variables("raw")
def _create_success_link(purchase: Purchase, raw: str, now: datetime) -> DownloadLink:
    try:
        with transaction.atomic():
            lifetime, limit = link_rules(purchase)
            return _create_link(
                purchase,
                raw,
                reason=DownloadLink.Reason.SUCCESS_PAGE,
                now=now,
                lifetime=lifetime,
                limit=limit,
            )
    except IntegrityError:
        # A parallel request for the same purchase created it first (token_hash is unique; on
        # PostgreSQL this insert waited for that one to commit).
        return DownloadLink.objects.get(token_hash=hash_token(raw))


# Hand-offs ------------------------------------------------------------------------------------


class BadHandoff(Exception):
    """The hand-off value was not signed by us (tampered, truncated, made up)."""


@dataclass(frozen=True)
class Handoff:
    link_id: int
    file_id: int
    #: Random per button press: the identity "the same hand-off" refers to.
    nonce: str


def make_handoff(link: DownloadLink, file: AbstractProductFile) -> str:
    """A signed value naming one link and file, new for every button press."""
    payload = {"l": link.pk, "f": file.pk, "n": secrets.token_urlsafe(12)}
    return signing.dumps(payload, salt=HANDOFF_SALT)


def handoff_url(link: DownloadLink, file: AbstractProductFile) -> str:
    return reverse("wagtail_paid_delivery:handoff", args=[make_handoff(link, file)])


def read_handoff(value: str) -> Handoff:
    # No max_age: a hand-off resumes for as long as its link is valid, checked on every request.
    try:
        data = signing.loads(value, salt=HANDOFF_SALT)
        return Handoff(link_id=int(data["l"]), file_id=int(data["f"]), nonce=str(data["n"])[:32])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise BadHandoff from None


# Counting -------------------------------------------------------------------------------------


def truncate_ip(address: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address: enough for abuse, not a person."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def _event(
    request: HttpRequest, link: DownloadLink | None, file_id: int | None, outcome: str, **fields
) -> DownloadEvent:
    return DownloadEvent(
        link=link,
        file_id=file_id,
        outcome=outcome,
        range_header=request.headers.get("Range", "")[:100],
        ip_address=truncate_ip(request.META.get("REMOTE_ADDR")),
        user_agent=request.headers.get("User-Agent", "")[:255],
        **fields,
    )


def record_event(
    request: HttpRequest,
    *,
    link: DownloadLink | None,
    file_id: int | None,
    outcome: str,
    handoff: str = "",
) -> DownloadEvent:
    """Log one request for a file's bytes that sends none (refused, HEAD, 416, a hook's answer)."""
    event = _event(request, link, file_id, outcome, handoff=handoff)
    event.save()
    return event


def reserve_download(
    request: HttpRequest,
    link: DownloadLink,
    file: AbstractProductFile,
    handoff: Handoff,
    *,
    promised: int,
    size: int,
    may_be_free: bool = True,
    now: datetime | None = None,
) -> DownloadEvent:
    """Decide a GET on a hand-off before any byte leaves: counted, free, or :class:`LinkUsedUp`.

    The first request served on a hand-off counts, whatever it asks for. A later one is free
    when ``may_be_free`` (the backend can vouch for what it will send), the count it stands on is
    younger than ``HANDOFF_WINDOW``, and the bytes promised since that count, ``promised``
    included, stay within ``HANDOFF_BYTE_BUDGET`` times ``size``; otherwise it counts like a new
    download. A request that would count at the limit is refused, and its hand-off with it, for
    good: it serves nothing again, even if counts are given back later.

    Everything is decided under the link and file's counter row lock, which every request on the
    hand-off takes, so parallel requests at the limit queue on it and only as many pass as the
    limit allows (on databases with row locks; SQLite serialises writers instead).
    """
    now = now or timezone.now()
    with transaction.atomic():
        counter = _lock_counter(link, file)
        state = _handoff_state(link, file, handoff, now)
        if state.refused_at is None:
            counts = not (may_be_free and _free(state, promised=promised, size=size, now=now))
            if not (counts and _at_limit(link, counter.count)):
                return _serve(request, link, state, counts=counts, promised=promised, now=now)
            # Saved before raising: the refusal outlives this request.
            state.refused_at = now
            state.save(update_fields=["refused_at"])
    raise LinkUsedUp(link)


def check_handoff(
    link: DownloadLink,
    file: AbstractProductFile,
    handoff: Handoff,
    *,
    promised: int,
    size: int,
    may_be_free: bool = True,
    now: datetime | None = None,
) -> None:
    """Raise :class:`LinkUsedUp` when a GET like this one would be refused now; change nothing.

    For HEAD, which never counts: it answers as the GET would, without taking a lock.
    """
    now = now or timezone.now()
    state = DownloadHandoff.objects.filter(nonce=handoff.nonce).first()
    if state is not None:
        if state.refused_at is not None:
            raise LinkUsedUp(link)
        if may_be_free and _free(state, promised=promised, size=size, now=now):
            return
    if _at_limit(link, file_counts(link).get(file.pk, 0)):
        raise LinkUsedUp(link)


def _free(state: DownloadHandoff, *, promised: int, size: int, now: datetime) -> bool:
    """Whether a later request on ``state``'s hand-off rides on the count it already has."""
    return (
        state.counted_at is not None
        and now < state.counted_at + app_settings.handoff_window
        and state.bytes_promised + promised <= app_settings.handoff_byte_budget(size)
    )


def _at_limit(link: DownloadLink, count: int) -> bool:
    return link.download_limit is not None and count >= link.download_limit


def _handoff_state(
    link: DownloadLink, file: AbstractProductFile, handoff: Handoff, now: datetime
) -> DownloadHandoff:
    # Under the counter lock: no other request on this hand-off (same link and file) runs now.
    state, _ = DownloadHandoff.objects.get_or_create(
        nonce=handoff.nonce, defaults={"link": link, "file_id": file.pk, "created_at": now}
    )
    return state


def _serve(
    request: HttpRequest,
    link: DownloadLink,
    state: DownloadHandoff,
    *,
    counts: bool,
    promised: int,
    now: datetime,
) -> DownloadEvent:
    if counts:
        FileDownloadCount.objects.filter(link=link, file_id=state.file_id).update(
            count=F("count") + 1
        )
        DownloadLink.objects.filter(pk=link.pk).update(download_count=F("download_count") + 1)
    event = _event(
        request,
        link,
        state.file_id,
        "served",
        handoff=state.nonce,
        counted=counts,
        created_at=now,
        bytes_promised=promised,
    )
    event.save()
    if counts:
        state.counted_at, state.counted_event, state.bytes_promised = now, event, promised
    else:
        state.bytes_promised += promised
    state.save(update_fields=["counted_at", "counted_event", "bytes_promised"])
    return event


def _lock_counter(link: DownloadLink, file: AbstractProductFile) -> FileDownloadCount:
    """The link's counter row for ``file``, locked until the transaction ends (created if new).

    A row this transaction inserts is locked by the insert; a concurrent first download blocks
    on the unique constraint, fails, and then waits for the lock like everyone else.
    """
    rows = FileDownloadCount.objects.select_for_update()
    counter = rows.filter(link=link, file_id=file.pk).first()
    if counter is None:
        try:
            with transaction.atomic():
                counter = FileDownloadCount.objects.create(link=link, file_id=file.pk)
        except IntegrityError:
            counter = rows.get(link=link, file_id=file.pk)
    return counter


def release_download(event: DownloadEvent) -> None:
    """Give a counted download back: its response closed having sent nothing.

    Only while the hand-off still stands on that count alone: if later requests on it were
    served free on this count (or a newer count replaced it), the count stays, or those bytes
    would have had none. A refused hand-off stays refused either way.
    """
    with transaction.atomic():
        # The counter lock first, as every request on the hand-off takes it.
        FileDownloadCount.objects.select_for_update().filter(
            link_id=event.link_id, file_id=event.file_id or 0
        ).first()
        handoffs = DownloadHandoff.objects.filter(nonce=event.handoff)
        state = handoffs.first() if event.handoff else None
        if state is not None and (
            state.counted_event_id != event.pk or state.bytes_promised != event.bytes_promised
        ):
            DownloadEvent.objects.filter(pk=event.pk).update(bytes_sent=0)
            return
        FileDownloadCount.objects.filter(
            link_id=event.link_id, file_id=event.file_id or 0, count__gt=0
        ).update(count=F("count") - 1)
        DownloadLink.objects.filter(pk=event.link_id or 0, download_count__gt=0).update(
            download_count=F("download_count") - 1
        )
        DownloadEvent.objects.filter(pk=event.pk).update(
            counted=False, outcome="not_sent", bytes_sent=0
        )
        if state is not None:
            state.counted_at, state.counted_event, state.bytes_promised = None, None, 0
            state.save(update_fields=["counted_at", "counted_event", "bytes_promised"])


def record_bytes_sent(event: DownloadEvent, sent: int) -> None:
    DownloadEvent.objects.filter(pk=event.pk).update(bytes_sent=sent)


# "Download all": one hand-off for several files ------------------------------------------------

ARCHIVE_HANDOFF_SALT = "wagtail_paid_delivery.archive_handoff"


@dataclass(frozen=True)
class ArchiveHandoff:
    """A signed hand-off naming one link and the files of its archive, in the archive's order.

    Each file has its own :class:`Handoff` (``member``), so each is counted, windowed and
    refused by the same rules and rows as a single file's hand-off.
    """

    link_id: int
    file_ids: tuple[int, ...]
    nonce: str

    def member(self, file: AbstractProductFile) -> Handoff:
        # 16 random characters, ".", the file id: within DownloadHandoff.nonce's 32.
        return Handoff(link_id=self.link_id, file_id=file.pk, nonce=f"{self.nonce}.{file.pk}")


def archive_files(link: DownloadLink) -> list[AbstractProductFile]:
    """The files a "Download all" of ``link`` holds: its product's files with downloads left,
    in the editor's order. A file at its limit is left out (it was downloaded already)."""
    counts = file_counts(link)
    return [f for f in product_files(link) if downloads_left(link, counts.get(f.pk, 0)) != 0]


def archive_handoff_url(link: DownloadLink, files: list[AbstractProductFile]) -> str:
    """A signed URL for the archive of ``files``, new for every button press."""
    payload = {"l": link.pk, "fs": [f.pk for f in files], "n": secrets.token_urlsafe(12)}
    signed = signing.dumps(payload, salt=ARCHIVE_HANDOFF_SALT)
    return reverse("wagtail_paid_delivery:archive_handoff", args=[signed])


def read_archive_handoff(value: str) -> ArchiveHandoff:
    try:
        data = signing.loads(value, salt=ARCHIVE_HANDOFF_SALT)
        link_id, nonce = int(data["l"]), str(data["n"])
        file_ids = tuple(int(pk) for pk in data["fs"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise BadHandoff from None
    if not file_ids or len(nonce) > 16 or len(set(file_ids)) != len(file_ids):
        raise BadHandoff
    return ArchiveHandoff(link_id=link_id, file_ids=file_ids, nonce=nonce)


def reserve_archive(
    request: HttpRequest,
    link: DownloadLink,
    files: list[AbstractProductFile],
    handoff: ArchiveHandoff,
    *,
    promised: int,
    size: int,
    now: datetime | None = None,
) -> list[DownloadEvent]:
    """:func:`reserve_download` for an archive: one download of each file, or none at all.

    Every file's counter row is locked (in id order, so two archives never wait on each other
    in a circle). The request counts when any file's hand-off has no count to ride on (first
    request, window passed, or ``promised`` past the budget of ``HANDOFF_BYTE_BUDGET`` times
    the archive's ``size``); then it counts for every file, and if any file is at its limit the
    whole archive is refused, for good, like a single file's hand-off. One event per file.
    """
    now = now or timezone.now()
    with transaction.atomic():
        counters = {f.pk: _lock_counter(link, f) for f in sorted(files, key=lambda f: f.pk)}
        states = [_handoff_state(link, f, handoff.member(f), now) for f in files]
        if all(state.refused_at is None for state in states):
            counts = not all(_free(s, promised=promised, size=size, now=now) for s in states)
            if not (counts and any(_at_limit(link, c.count) for c in counters.values())):
                return [
                    _serve(request, link, state, counts=counts, promised=promised, now=now)
                    for state in states
                ]
            for state in states:
                state.refused_at = now
                state.save(update_fields=["refused_at"])
    raise LinkUsedUp(link)


def check_archive(
    link: DownloadLink,
    files: list[AbstractProductFile],
    handoff: ArchiveHandoff,
    *,
    promised: int,
    size: int,
    now: datetime | None = None,
) -> None:
    """Raise :class:`LinkUsedUp` when a GET like this one would be refused now; change nothing
    (for HEAD)."""
    now = now or timezone.now()
    nonces = [handoff.member(f).nonce for f in files]
    states = list(DownloadHandoff.objects.filter(nonce__in=nonces))
    if any(state.refused_at is not None for state in states):
        raise LinkUsedUp(link)
    if len(states) == len(files) and all(
        _free(s, promised=promised, size=size, now=now) for s in states
    ):
        return
    counts = file_counts(link)
    if any(_at_limit(link, counts.get(f.pk, 0)) for f in files):
        raise LinkUsedUp(link)
