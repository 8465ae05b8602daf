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
import functools
import hashlib
import ipaddress
import re
import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Literal

from django.apps import apps
from django.conf import settings
from django.core import signing
from django.db import IntegrityError, connection, models, transaction
from django.db.models import F
from django.http import HttpRequest
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.dateparse import parse_datetime
from django.utils.translation import get_language
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


def file_count(link: DownloadLink, file_id: int) -> int:
    """Downloads counted so far on ``link`` for one file (one indexed read)."""
    found = FileDownloadCount.objects.filter(link=link, file_id=file_id).values_list("count")
    row = found.first()
    return row[0] if row else 0


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


# One query for the link, its purchase and a file: the hand-off GET and the button's POST run it
# on every download, so its SQL is written once per process (``_link_file_sql``) rather than
# compiled by the ORM each time (a select_related over some fifty columns costs more in Python
# than the query costs the database). Rows become model instances through ``Model.from_db``
# with each field's database converters, as the ORM's own iterator does.


@dataclass(frozen=True)
class _Columns:
    model: type[Any]
    fields: tuple[Any, ...]
    attnames: list[str]
    converters: tuple[tuple[int, tuple[Any, ...], Any], ...]

    @classmethod
    def of(cls, model: type[Any], alias: str) -> _Columns:
        fields = tuple(model._meta.concrete_fields)
        converters = []
        for index, field in enumerate(fields):
            col = field.get_col(alias)
            found = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
            if found:
                converters.append((index, tuple(found), col))
        return cls(model, fields, [f.attname for f in fields], tuple(converters))

    def select(self, alias: str) -> list[str]:
        return [f"{alias}.{connection.ops.quote_name(f.column)}" for f in self.fields]

    def instance(self, values: Any) -> Any:
        values = list(values)
        if values[0] is None:  # the primary key: a LEFT JOIN that found nothing
            return None
        for index, converters, col in self.converters:
            for converter in converters:
                values[index] = converter(values[index], col, connection)
        return self.model.from_db(connection.alias, self.attnames, values)


@functools.cache
def _link_file_sql(vendor: str, by: str) -> tuple[str, list[_Columns]]:
    """SELECT link, purchase, each file model's row and the file's count on the link (file id
    ``%(file)s``), WHERE link.``by`` = ``%(value)s``. Cached per database vendor.

    Named parameters: Django's SQLite cursor turns ``%s`` into ``?`` with a regular expression
    over the whole (long) statement on every execution, a mapping with one ``%`` formatting."""
    quote = connection.ops.quote_name
    columns = [_Columns.of(DownloadLink, "l"), _Columns.of(Purchase, "p")]
    joins = []
    for index, model in enumerate(product_file_models()):
        alias = f"f{index}"
        columns.append(_Columns.of(model, alias))
        page = quote(model._meta.get_field("page").column)
        joins.append(
            f"LEFT OUTER JOIN {_table(model)} {alias} "
            f"ON {alias}.{quote(model._meta.pk.column)} = %(file)s "
            f"AND {alias}.{page} = p.product_id"
        )
    aliases = ["l", "p", *(f"f{index}" for index in range(len(joins)))]
    selected = [name for c, alias in zip(columns, aliases, strict=True) for name in c.select(alias)]
    # Each file's product's ``past_buyers_get`` (which version serving sends, ``versions``).
    for index, model in enumerate(product_file_models()):
        page_model = model._meta.get_field("page").related_model
        page = quote(model._meta.get_field("page").column)
        # The table of the model that declares the field: a multi-table child's parent, whose
        # pk has the same value as the child's.
        policy = page_model._meta.get_field("past_buyers_get")
        owner = policy.model
        selected.append(
            f"(SELECT pg.{quote(policy.column)} FROM {_table(owner)} pg "  # noqa: S608
            f"WHERE pg.{quote(owner._meta.pk.column)} = f{index}.{page})"
        )
    counter = _table(FileDownloadCount)
    count = (
        f"(SELECT c.count FROM {counter} c "  # noqa: S608
        "WHERE c.link_id = l.id AND c.file_id = %(file)s)"
    )
    sql = (
        f"SELECT {', '.join(selected)}, {count} FROM {_table(DownloadLink)} l "  # noqa: S608
        f"INNER JOIN {_table(Purchase)} p ON p.id = l.purchase_id {' '.join(joins)} "
        f"WHERE l.{quote(by)} = %(value)s"
    )
    return sql, columns


def _find_link_and_file(
    by: str, value: Any, file_id: int
) -> tuple[DownloadLink | None, AbstractProductFile | None, int]:
    sql, columns = _link_file_sql(connection.vendor, by)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"file": file_id, "value": value})
        row = cursor.fetchone()
    if row is None:
        return None, None, 0
    start, parts = 0, []
    for c in columns:
        parts.append(c.instance(row[start : start + len(c.fields)]))
        start += len(c.fields)
    link, purchase, *files = parts
    link.purchase = purchase
    policies = row[start:-1]
    file = next((f for f in files if f is not None), None)
    if file is not None:
        file.past_buyers_get = policies[files.index(file)]  # type: ignore[attr-defined]
    return link, file, row[-1] or 0


def find_handoff(ticket: Handoff) -> tuple[DownloadLink | None, AbstractProductFile | None]:
    """The link a hand-off names (with its purchase) and its file when the file belongs to the
    link's product (else None), in one query."""
    link, file, _ = _find_link_and_file("id", ticket.link_id, ticket.file_id)
    return link, file


@sensitive_variables("raw")
def find_link_with_file(
    raw: Any, file_id: int
) -> tuple[DownloadLink | None, AbstractProductFile | None, int]:
    """For the download button: the link a raw token names (in whatever state), the product file
    ``file_id`` if it is the link's product's, and the downloads counted on that file, in one
    query."""
    if not isinstance(raw, str) or not TOKEN_RE.match(raw):
        return None, None, 0
    return _find_link_and_file("token_hash", hash_token(raw), file_id)


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
    if purchase is not None and purchase.product_id and purchase.product:
        # Wagtail's cached site root paths (as ``page.url`` uses): no Site query per email.
        parts = purchase.product.get_url_parts()
        root = (parts[1] or _site_root(parts[0])) if parts else ""
    if not root:
        site = Site.objects.filter(is_default_site=True).first()
        root = site.root_url if site else getattr(settings, "WAGTAILADMIN_BASE_URL", "")
    return str(root).rstrip("/")


def _site_root(site_id: int) -> str:
    """The root URL of a site Wagtail could not reverse a page URL in (``get_url_parts``)."""
    site = Site.objects.filter(pk=site_id).first()
    return str(site.root_url) if site else ""


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
    head, tail = _handoff_path(
        get_script_prefix(), get_urlconf() or settings.ROOT_URLCONF, get_language()
    )
    return f"{head}{make_handoff(link, file)}{tail}"


#: Stands for the signed value in a reversed hand-off URL. A signed value is URL-safe base64
#: and colons, which reverse() leaves as they are, so substituting it gives reverse()'s answer.
_SIGNED = "SIGNED"


@functools.lru_cache(maxsize=16)
def _handoff_path(prefix: str, urlconf: Any, language: str | None) -> tuple[str, str]:
    # Resolved once per script prefix, URLconf and language (i18n_patterns prefix the path
    # with it), not on every button press.
    path = reverse("wagtail_paid_delivery:handoff", args=[_SIGNED], urlconf=urlconf)
    head, _, tail = path.rpartition(_SIGNED)
    return head, tail


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
    # The network address by masking the host bits (cheaper than building an ip_network).
    if ip.version == 4:
        return str(ipaddress.IPv4Address(int(ip) & _IPV4_24))
    return str(ipaddress.IPv6Address(int(ip) & _IPV6_48))


_IPV4_24 = (2**32 - 1) ^ (2**8 - 1)
_IPV6_48 = (2**128 - 1) ^ (2**80 - 1)


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

    One transaction, few statements: the hand-off's row is created or locked first (so a
    hand-off's requests are decided one at a time), a count is reserved by one conditional upsert
    of the file's counter (``count < limit``: of parallel requests on other hand-offs at the
    limit only as many pass as it allows), and the event is written in the same commit. On
    PostgreSQL all of it is one statement (:func:`_reserve_in_one_statement`); elsewhere a few
    in one transaction (SQLite serialises writers anyway).
    """
    now = now or timezone.now()
    if connection.vendor == "postgresql":
        terms = _Terms(promised=promised, size=size, may_be_free=may_be_free, now=now)
        return _reserve_in_one_statement(request, link, file.pk, handoff, terms)
    with transaction.atomic(), connection.cursor() as cursor:
        state = _lock_handoff(cursor, link, file.pk, handoff, now)
        if state.refused_at is None:
            if may_be_free and _free(state, promised=promised, size=size, now=now):
                return _serve_free(cursor, request, link, state, promised=promised, now=now)
            if _reserve_count(cursor, link, file.pk):
                return _serve_counted(cursor, request, link, state, promised=promised, now=now)
            # Saved before raising: the refusal outlives this request.
            DownloadHandoff.objects.filter(pk=state.pk).update(refused_at=now)
    raise LinkUsedUp(link)


@dataclass(frozen=True)
class _Terms:
    promised: int
    size: int
    may_be_free: bool
    now: datetime


#: PostgreSQL: the whole decision of a GET on a hand-off as one statement, so it costs one
#: round trip and commits on its own. ``cur`` locks the hand-off's row (FOR UPDATE in READ
#: COMMITTED waits for a parallel request on it and reads its result); the counter's
#: conditional upsert reserves a count only while below the limit; the event, the hand-off
#: and the link's total follow from the outcome. A brand-new hand-off has no row to lock: two
#: first requests at once both try to insert it, and the loser's whole statement fails on the
#: unique nonce (undoing its count) and is run again, finding the winner's row.
_ONE_STATEMENT = """
WITH cur AS (
    SELECT id, counted_at, bytes_promised, refused_at FROM {handoff} WHERE nonce = %(nonce)s
    FOR UPDATE
), decision AS (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM cur WHERE refused_at IS NOT NULL) THEN 'gone'
        WHEN %(may_be_free)s AND EXISTS (
            SELECT 1 FROM cur WHERE counted_at > %(window_start)s
            AND bytes_promised + %(promised)s <= %(budget)s
        ) THEN 'free'
        ELSE 'count'
    END AS what
), counter AS (
    INSERT INTO {counter} (link_id, file_id, count)
    SELECT %(link)s, %(file)s, 1 FROM decision WHERE what = 'count' AND %(may_count)s
    ON CONFLICT (link_id, file_id) DO UPDATE SET count = {counter}.count + 1 {below_limit}
    RETURNING 1
), outcome AS (
    SELECT CASE
        WHEN what = 'count' THEN
            CASE WHEN EXISTS (SELECT 1 FROM counter) THEN 'counted' ELSE 'refused' END
        ELSE what
    END AS what FROM decision
), event AS (
    INSERT INTO {event} (link_id, file_id, created_at, outcome, counted, handoff, range_header,
        bytes_promised, bytes_sent, ip_address, user_agent)
    SELECT %(link)s, %(file)s, %(now)s, 'served', what = 'counted', %(nonce)s, %(range)s,
        %(promised)s, NULL, %(ip)s, %(agent)s
    FROM outcome WHERE what IN ('free', 'counted')
    RETURNING id
), new_handoff AS (
    INSERT INTO {handoff} (link_id, file_id, nonce, created_at, counted_at, counted_event_id,
        bytes_promised, refused_at)
    SELECT %(link)s, %(file)s, %(nonce)s, %(now)s,
        CASE WHEN o.what = 'counted' THEN %(now)s END, e.id,
        CASE WHEN o.what = 'counted' THEN %(promised)s ELSE 0 END,
        CASE WHEN o.what = 'refused' THEN %(now)s END
    FROM outcome o LEFT JOIN event e ON true
    WHERE NOT EXISTS (SELECT 1 FROM cur)
), old_handoff AS (
    UPDATE {handoff} h SET
        counted_at = CASE WHEN o.what = 'counted' THEN %(now)s ELSE h.counted_at END,
        counted_event_id = CASE WHEN o.what = 'counted' THEN e.id ELSE h.counted_event_id END,
        bytes_promised = CASE o.what WHEN 'counted' THEN %(promised)s
            WHEN 'free' THEN h.bytes_promised + %(promised)s ELSE h.bytes_promised END,
        refused_at = CASE WHEN o.what = 'refused' THEN %(now)s ELSE h.refused_at END
    FROM cur, outcome o LEFT JOIN event e ON true
    WHERE h.id = cur.id AND o.what <> 'gone'
), total AS (
    UPDATE {link} SET download_count = download_count + 1
    WHERE id = %(link)s AND EXISTS (SELECT 1 FROM outcome WHERE what = 'counted')
)
SELECT o.what, e.id FROM outcome o LEFT JOIN event e ON true
"""


def _reserve_in_one_statement(
    request: HttpRequest, link: DownloadLink, file_id: int, handoff: Handoff, terms: _Terms
) -> DownloadEvent:
    limit = link.download_limit
    event = _event(
        request,
        link,
        file_id,
        "served",
        handoff=handoff.nonce,
        created_at=terms.now,
        bytes_promised=terms.promised,
    )
    sql = _ONE_STATEMENT.format(
        handoff=_table(DownloadHandoff),
        counter=_table(FileDownloadCount),
        event=_table(DownloadEvent),
        link=_table(DownloadLink),
        below_limit=f"WHERE {_table(FileDownloadCount)}.count < %(limit)s" if limit else "",
    )
    ip_field = DownloadEvent._meta.get_field("ip_address")
    params = {
        "nonce": handoff.nonce,
        "may_be_free": terms.may_be_free,
        "window_start": terms.now - app_settings.handoff_window,
        "promised": terms.promised,
        "budget": app_settings.handoff_byte_budget(terms.size),
        "link": link.pk,
        "file": file_id,
        "may_count": limit is None or limit > 0,
        "limit": limit,
        "now": terms.now,
        "range": event.range_header,
        "ip": ip_field.get_db_prep_save(event.ip_address, connection),
        "agent": event.user_agent,
    }
    for attempt in range(3):
        try:
            # Inside a caller's transaction (ATOMIC_REQUESTS, tests) a savepoint lets a lost race
            # be run again; in autocommit the statement is its own transaction.
            savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
            with savepoint, connection.cursor() as cursor:
                cursor.execute(sql, params)
                what, event.pk = cursor.fetchone()
            break
        except IntegrityError:
            if attempt == 2:
                raise
    if what not in ("free", "counted"):
        raise LinkUsedUp(link)
    event.counted = what == "counted"
    event._state.adding, event._state.db = False, connection.alias
    return event


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
    if _at_limit(link, file_count(link, file.pk)):
        raise LinkUsedUp(link)


def _free(state: DownloadHandoff | _HandoffRow, *, promised: int, size: int, now: datetime) -> bool:
    """Whether a later request on ``state``'s hand-off rides on the count it already has."""
    return (
        state.counted_at is not None
        and now < state.counted_at + app_settings.handoff_window
        and state.bytes_promised + promised <= app_settings.handoff_byte_budget(size)
    )


def _at_limit(link: DownloadLink, count: int) -> bool:
    return link.download_limit is not None and count >= link.download_limit


def _table(model: type[Any]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _aware(value: Any) -> datetime | None:
    """A datetime column read by a raw cursor (SQLite hands back text, naive in UTC)."""
    if value is None or isinstance(value, datetime) and timezone.is_aware(value):
        return value
    parsed = parse_datetime(value) if isinstance(value, str) else value
    return timezone.make_aware(parsed, UTC) if parsed is not None else None


@dataclass
class _HandoffRow:
    """A hand-off's row as the single-file path reads it: the columns its decision needs."""

    pk: int
    file_id: int
    nonce: str
    counted_at: datetime | None
    bytes_promised: int
    refused_at: datetime | None


def _lock_handoff(
    cursor: Any, link: DownloadLink, file_id: int, handoff: Handoff, now: datetime
) -> _HandoffRow:
    """The hand-off's row, created on its first request, locked until the transaction ends.

    One statement: an insert that, when the nonce exists, rewrites a column with itself, which
    takes the row lock (PostgreSQL: a parallel first request waits for the insert to commit,
    then updates). Every request on the hand-off passes here first, so they queue on it.
    """
    table = _table(DownloadHandoff)
    cursor.execute(
        f"INSERT INTO {table} (link_id, file_id, nonce, created_at, bytes_promised) "  # noqa: S608
        "VALUES (%s, %s, %s, %s, 0) "
        f"ON CONFLICT (nonce) DO UPDATE SET bytes_promised = {table}.bytes_promised "
        "RETURNING id, counted_at, bytes_promised, refused_at",
        [link.pk, file_id, handoff.nonce, connection.ops.adapt_datetimefield_value(now)],
    )
    pk, counted, promised, refused = cursor.fetchone()
    return _HandoffRow(pk, file_id, handoff.nonce, _aware(counted), promised, _aware(refused))


def _reserve_count(cursor: Any, link: DownloadLink, file_id: int) -> bool:
    """Count one download of ``file_id`` on ``link`` unless that file is at the link's limit.

    One conditional upsert: the counter row is created at 1, or raised by 1 only while below the
    limit; the database decides on the row's latest version under its lock, so of parallel
    requests on one file only as many as the limit allows get a row back.
    """
    limit = link.download_limit
    if limit is not None and limit <= 0:
        return False
    table = _table(FileDownloadCount)
    below_limit = f" WHERE {table}.count < %s" if limit is not None else ""
    cursor.execute(
        f"INSERT INTO {table} (link_id, file_id, count) VALUES (%s, %s, 1) "  # noqa: S608
        f"ON CONFLICT (link_id, file_id) DO UPDATE SET count = {table}.count + 1"
        f"{below_limit} RETURNING count",
        [link.pk, file_id] + ([limit] if limit is not None else []),
    )
    return cursor.fetchone() is not None


# The statements a download runs every time are written out rather than compiled by the ORM on
# each request (see _link_file_sql), on the one cursor of the reservation's transaction.


def _serve_free(
    cursor: Any,
    request: HttpRequest,
    link: DownloadLink,
    state: _HandoffRow,
    *,
    promised: int,
    now: datetime,
) -> DownloadEvent:
    cursor.execute(
        f"UPDATE {_table(DownloadHandoff)} SET bytes_promised = bytes_promised + %s "  # noqa: S608
        "WHERE id = %s",
        [promised, state.pk],
    )
    return _served_event(cursor, request, link, state, counted=False, promised=promised, now=now)


def _serve_counted(
    cursor: Any,
    request: HttpRequest,
    link: DownloadLink,
    state: _HandoffRow,
    *,
    promised: int,
    now: datetime,
) -> DownloadEvent:
    event = _served_event(cursor, request, link, state, counted=True, promised=promised, now=now)
    # A new count starts a new window and budget, and is the one a release may give back.
    cursor.execute(
        f"UPDATE {_table(DownloadHandoff)} SET counted_at = %s, counted_event_id = %s, "  # noqa: S608
        "bytes_promised = %s WHERE id = %s",
        [connection.ops.adapt_datetimefield_value(now), event.pk, promised, state.pk],
    )
    cursor.execute(
        f"UPDATE {_table(DownloadLink)} SET download_count = download_count + 1 "  # noqa: S608
        "WHERE id = %s",
        [link.pk],
    )
    return event


def _served_event(
    cursor: Any,
    request: HttpRequest,
    link: DownloadLink,
    state: _HandoffRow,
    *,
    counted: bool,
    promised: int,
    now: datetime,
) -> DownloadEvent:
    event = _event(
        request,
        link,
        state.file_id,
        "served",
        handoff=state.nonce,
        counted=counted,
        created_at=now,
        bytes_promised=promised,
    )
    _insert(cursor, event)
    return event


#: Field classes (exactly these, not subclasses) whose database value is the Python value itself
#: for the str, int, bool or None the download code sets: their prepare step is skipped.
_AS_IS = (
    models.CharField,
    models.TextField,
    models.BooleanField,
    models.IntegerField,
    models.BigIntegerField,
    models.PositiveIntegerField,
    models.PositiveBigIntegerField,
)


@functools.cache
def _insert_sql(vendor: str, label: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The INSERT and, per column, its attribute and the field to prepare it (None: as is)."""
    model = apps.get_model(label)
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    pk = connection.ops.quote_name(model._meta.pk.column)
    sql = f"INSERT INTO {_table(model)} ({columns}) VALUES ({values}) RETURNING {pk}"  # noqa: S608
    plain = tuple((f.attname, None if type(f) in _AS_IS else f) for f in fields)
    return sql, plain


def _insert(cursor: Any, instance: Any) -> None:
    """``instance.save()`` for a new row of a model without signals or auto fields: the values
    prepared by each field, as save() does, into a statement written once per process."""
    sql, fields = _insert_sql(connection.vendor, instance._meta.label)
    values = []
    for attname, field in fields:
        value = getattr(instance, attname)
        values.append(value if field is None else field.get_db_prep_save(value, connection))
    cursor.execute(sql, values)
    instance.pk = cursor.fetchone()[0]
    instance._state.adding, instance._state.db = False, connection.alias


def release_download(event: DownloadEvent) -> None:
    """Give a counted download back: its response closed having sent nothing.

    Only while the hand-off still stands on that count alone: if later requests on it were
    served free on this count (or a newer count replaced it), the count stays, or those bytes
    would have had none. A refused hand-off stays refused either way.
    """
    with transaction.atomic():
        # The hand-off's row lock first, as every request on the hand-off takes it.
        handoffs = DownloadHandoff.objects.select_for_update().filter(nonce=event.handoff)
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
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_table(DownloadEvent)} SET bytes_sent = %s WHERE id = %s",  # noqa: S608
            [sent, event.pk],
        )


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


# The archive's reservation (``reserve_archive``) locks every member's hand-off row, then its
# counter, in file id order: hand-off first, as a single file's reservation and
# ``release_download`` do, so an archive and a release never wait on each other in a circle.
# These helpers are its steps (a single file uses the one-statement path).


def _handoff_state(
    link: DownloadLink, file: AbstractProductFile, handoff: Handoff, now: datetime
) -> DownloadHandoff:
    """The hand-off's row for ``file``, locked until the transaction ends (created if new)."""
    state, _ = DownloadHandoff.objects.get_or_create(
        nonce=handoff.nonce, defaults={"link": link, "file_id": file.pk, "created_at": now}
    )
    return DownloadHandoff.objects.select_for_update().get(pk=state.pk)


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

    Every file's hand-off row, then its counter row, is locked in file id order (the order
    every other request on these rows takes, so none waits on another in a circle). The request
    counts when any file's hand-off has no count to ride on (first request, window passed, or
    ``promised`` past the budget of ``HANDOFF_BYTE_BUDGET`` times the archive's ``size``); then
    it counts for every file, and if any file is at its limit the
    whole archive is refused, for good, like a single file's hand-off. One event per file.
    """
    now = now or timezone.now()
    with transaction.atomic():
        by_id = {}
        counters = {}
        for f in sorted(files, key=lambda f: f.pk):
            by_id[f.pk] = _handoff_state(link, f, handoff.member(f), now)
            counters[f.pk] = _lock_counter(link, f)
        states = [by_id[f.pk] for f in files]
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
