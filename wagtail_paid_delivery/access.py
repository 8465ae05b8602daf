"""Who may see content for buyers only: the one home of "does this visitor own that product".

A visitor owns a product when the library knows them (a Django login, or an address proven by
a library sign-in link, ``library.session_email``) and one of their purchases of that product
is paid now (``library.library_purchases`` decides whose purchases they are). Refunded, revoked
and disputed purchases give nothing, from the next request on: nothing is cached beyond the
request. A purchase that grants other products (a bundle) does so through purchases of those
products, so they count here without any rule of their own.

Pages: a ``BuyersOnlyRestriction`` on a page covers it and its descendants (as Wagtail's
privacy does); every restriction on the way up must be met. ``check`` gives the verdict the
``before_serve_page`` hook (``gate``) acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import swapper
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from . import library
from .models import BuyersOnlyRestriction, Purchase

#: Where one request keeps its answers (product id → bool), so a page with many blocks asks once.
OWNED_ATTR = "_paid_delivery_owned"


def owns(request: HttpRequest | None, product: Any) -> bool:
    """Whether this request's library identity has a paid purchase of ``product`` now."""
    if request is None or product is None or getattr(product, "pk", None) is None:
        return False
    known = getattr(request, OWNED_ATTR, None)
    if known is None:
        known = {}
        setattr(request, OWNED_ATTR, known)
    if product.pk not in known:
        user = getattr(request, "user", None)
        purchases = library.library_purchases(user, library.session_email(request))
        known[product.pk] = purchases.filter(
            product_id=product.pk, status=Purchase.Status.PAID
        ).exists()
    return bool(known[product.pk])


def is_signed_in(request: HttpRequest) -> bool:
    """Whether the library knows this visitor at all (their purchases can be looked up)."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated) or bool(library.session_email(request))


def restrictions_for(page: Any) -> list[BuyersOnlyRestriction]:
    """The restrictions on ``page`` and its ancestors, nearest first; for an alias, also those
    of the page it mirrors (an alias elsewhere in the tree shows the same content)."""
    page_model = swapper.load_model("wagtailcore", "Page")
    paths = _ancestor_paths(getattr(page, "path", "") or "", page_model.steplen)
    alias_of = getattr(page, "alias_of_id", None)
    if alias_of is not None:
        original = page_model.objects.filter(pk=alias_of).values_list("path", flat=True).first()
        paths += _ancestor_paths(original or "", page_model.steplen)
    if not paths:
        return []
    found = BuyersOnlyRestriction.objects.filter(page__path__in=paths).select_related("page")
    return sorted(found, key=lambda r: -len(r.page.path))


def _ancestor_paths(path: str, steplen: int) -> list[str]:
    return [path[:end] for end in range(steplen, len(path) + 1, steplen)]


@dataclass(frozen=True)
class Verdict:
    """What a restricted page's request gets: ``allowed``, or the restriction that refused it."""

    allowed: bool
    refused_by: BuyersOnlyRestriction | None = None

    @property
    def misconfigured(self) -> bool:
        """Refused because the restriction's product is gone: nobody may see the page."""
        return self.refused_by is not None and self.refused_by.product_id is None


def check(request: HttpRequest, page: Any) -> Verdict | None:
    """None for a page no restriction covers; else whether this request may see it."""
    restrictions = restrictions_for(page)
    if not restrictions:
        return None
    for restriction in restrictions:
        if restriction.product_id is None:
            return Verdict(allowed=False, refused_by=restriction)
    for restriction in restrictions:
        if not owns(request, restriction.product):
            return Verdict(allowed=False, refused_by=restriction)
    return Verdict(allowed=True)


def without_buyers_only(pages: QuerySet[Any]) -> QuerySet[Any]:
    """``pages`` without the restricted ones and their descendants: for a site's search view,
    listings, feeds and API, which Wagtail's serve hooks do not cover. Search after filtering:
    ``without_buyers_only(Page.objects.live()).search(query)``."""
    match = Q()
    restricted = Q()
    for path in BuyersOnlyRestriction.objects.values_list("page__path", flat=True):
        match |= Q(path__startswith=path)
        restricted |= Q(alias_of__path__startswith=path)
    if not match:
        return pages
    # Aliases elsewhere of restricted pages go too; by id, which search backends can filter on.
    aliases = list(pages.model.objects.filter(restricted).values_list("pk", flat=True))
    return pages.exclude(match | Q(pk__in=aliases)) if aliases else pages.exclude(match)


def pages_for(product_ids: list[Any]) -> dict[Any, list[Any]]:
    """The live pages restricted to each of ``product_ids`` (product id → pages, in tree order),
    so the library can show a buyer the way back to what they bought access to."""
    found: dict[Any, list[Any]] = {}
    restrictions = (
        BuyersOnlyRestriction.objects.filter(product_id__in=product_ids, page__live=True)
        .select_related("page")
        .order_by("page__path")
    )
    for restriction in restrictions:
        found.setdefault(restriction.product_id, []).append(restriction.page)
    return found
