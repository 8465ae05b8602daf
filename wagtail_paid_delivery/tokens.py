"""Issue and check download links.

A link's raw token (256 random bits, ``secrets.token_urlsafe(32)``) leaves this module once, in
the URL :func:`issue_link` builds; the database keeps only its SHA-256. Checking a token is one
indexed lookup on that hash.

A link is usable only while its purchase is ``paid``, checked at every use: a disputed purchase's
links pause and work again when the dispute is won, with no new links. Only an editor's revoke
(:func:`revoke_link`) or the purchase's own final states (refunded, revoked) end a link for good.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables
from wagtail.models import Site

from .conf import app_settings
from .models import DownloadLink, FileDownloadCount, Purchase
from .models.pages import AbstractProductFile, ProductPageMixin
from .utils import product_file_models

#: ``secrets.token_urlsafe(32)``: 43 characters of the URL-safe base64 alphabet.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


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


def _product(purchase: Purchase) -> ProductPageMixin | None:
    page = purchase.product
    if page is None:
        return None
    specific = page.specific
    return specific if isinstance(specific, ProductPageMixin) else None


def issue_link(purchase: Purchase, *, reason: str, now: datetime | None = None) -> IssuedLink:
    """A new download link for a paid purchase, with the product's (or the site's) rules."""
    if purchase.status != Purchase.Status.PAID:
        raise CannotIssueLink(f"Purchase {purchase.pk} is {purchase.status}, not paid.")
    now = now or timezone.now()
    product = _product(purchase)
    if product is not None:
        lifetime = product.get_link_lifetime()
        limit = product.get_download_limit()
    else:
        lifetime = app_settings.link_lifetime
        limit = app_settings.DOWNLOAD_LIMIT
    raw = secrets.token_urlsafe(32)
    link = DownloadLink.objects.create(
        purchase=purchase,
        token_hash=hash_token(raw),
        reason=reason,
        created_at=now,
        expires_at=now + lifetime,
        download_limit=limit or None,
    )
    return IssuedLink(link=link, token=raw, url=download_page_url(raw, purchase=purchase))


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
    if not isinstance(raw, str) or not TOKEN_RE.match(raw):
        raise InvalidToken
    try:
        link = DownloadLink.objects.select_related("purchase").get(token_hash=hash_token(raw))
    except DownloadLink.DoesNotExist:
        raise InvalidToken from None
    return check_link(link, now=now)


def revoke_link(link: DownloadLink, *, now: datetime | None = None) -> None:
    """End a link for good (an editor's decision). Revoking twice keeps the first time."""
    now = now or timezone.now()
    DownloadLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=now)
    link.refresh_from_db(fields=["revoked_at"])


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
    product = _product(link.purchase)
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


def add_downloads(link: DownloadLink, delta: int) -> None:
    """Adjust ``DownloadLink.download_count`` (the all-files total) without a read."""
    DownloadLink.objects.filter(pk=link.pk).update(download_count=F("download_count") + delta)


def download_page_url(raw: str, *, purchase: Purchase | None = None) -> str:
    """The absolute URL of the download page for ``raw``, from the Wagtail Site root.

    The product's own site when known, else the default site, else ``WAGTAILADMIN_BASE_URL``.
    """
    path = reverse("wagtail_paid_delivery:download", args=[raw])
    root = ""
    if purchase is not None and purchase.product_id:
        site = purchase.product.get_site() if purchase.product else None
        root = site.root_url if site else ""
    if not root:
        site = Site.objects.filter(is_default_site=True).first()
        root = site.root_url if site else getattr(settings, "WAGTAILADMIN_BASE_URL", "")
    return f"{root.rstrip('/')}{path}"


#: Human words for the unlimited case, used where a number of downloads is shown.
UNLIMITED = _("unlimited")
