"""Checkout rules: which purchase a Buy click makes (or reuses) and the Checkout Session for it.

The view (``views/checkout.py``) checks the request and answers; everything it asks here takes
plain values, not the request. Success and cancel URLs come from the Wagtail Site the product
belongs to, never from the request, so a forged Host header cannot send a buyer (and their
session id) elsewhere. Nothing is left pending without a session: a Purchase whose session
Stripe refused (a rejected key, a bad parameter) is deleted, one whose session may exist (Stripe
unreachable) is marked failed through the state machine (``fulfillment.fail_checkout``).

One click, one session. A repeated click is recognised two ways:

- **The Buy form's nonce** (``checkout.js`` makes 128 random bits when the form is first
  submitted; the cached product page renders nothing per visitor). Two POSTs of one click, even
  at the same moment and before any cookie exists, carry the same nonce. The purchase stores
  :func:`nonce_key` (unique), so only one of them creates a purchase; the other reads it, and
  both ask Stripe for the session with the same idempotency key (the product id and that key),
  so Stripe answers both with one session, even while the first request is still waiting for it.
- **The binding cookie** (``find_open_purchase``), for browsers without script and for clicks
  after the first response arrived.

Why a nonce someone else learned gives them nothing harmful: the nonce is a bearer value as
secret as the form it sits in. It is random per click, travels only in the POST body to this
site, and is stored nowhere (the purchase keeps a hash; Stripe sees a hash). Its key is scoped:
by a SHA-256 of the exact binding cookie the request carried, when it carried one (a signed,
HttpOnly value nobody else can send), else by the client's network (the /24 or /48 of
``REMOTE_ADDR``); and a purchase is joined only by the same signed-in user (or none), for the
same product at today's price, while it is pending and at most :data:`NONCE_WINDOW` old. A
nonce replayed from another browser, network or account therefore keys a purchase of its own (a
normal checkout for whoever sent it); it never reaches the first buyer's session, binding or
email. What is left is a replay from the same network with no cookie within minutes of the
click, which needs the nonce from inside the buyer's page, where script could already click Buy
itself. Malformed nonces (anything but 32 lowercase hex digits, or several values) are ignored:
the click is handled as one without script.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from . import fulfillment, languages, metadata, stripe_api
from .conf import SETTINGS_NAME, app_settings
from .links import truncate_ip
from .models import Purchase
from .prices import custom_price_id, stripe_price_problems

logger = logging.getLogger(__name__)

#: An open purchase is reused for a second click only while its Checkout Session is surely
#: still open (sessions expire after 24 hours, and so do Stripe's idempotency keys).
REUSE_WINDOW = timedelta(hours=23)
#: The Buy form's nonce, as checkout.js makes it: 16 random bytes as 32 lowercase hex digits.
NONCE_RE = re.compile(r"\A[0-9a-f]{32}\Z")
#: How long a nonce joins the purchase it started: its POSTs come at the same moment (or a few
#: seconds apart, when a browser retries). After that, the binding cookie recognises the buyer.
NONCE_WINDOW = timedelta(minutes=10)
NONCE_SALT = "wagtail_paid_delivery.checkout_nonce"


class CheckoutUnavailable(Exception):
    """Checkout cannot start now; the buyer sees the "checkout unavailable" copy (503)."""


@dataclass
class CheckoutStarted:
    purchase: Purchase
    url: str
    reused: bool


def success_url(page: Any) -> str:
    root = page.get_site().root_url.rstrip("/")
    return f"{root}{reverse('wagtail_paid_delivery:success')}?session_id={{CHECKOUT_SESSION_ID}}"


def session_params(purchase: Purchase, page: Any, customer_email: str | None) -> dict[str, Any]:
    """The Checkout Session to create for ``purchase``.

    Built from the purchase's snapshot (not the live page), so a second click sends exactly the
    same parameters and Stripe answers its idempotency key with the same session.
    """
    if page.pay_what_you_want:
        line_item: dict[str, Any] = {"price": page.custom_price_id, "quantity": 1}
    elif page.stripe_price_id:
        line_item = {"price": page.stripe_price_id, "quantity": 1}
    else:
        line_item = {
            "price_data": {
                "currency": purchase.currency.lower(),
                "unit_amount": purchase.amount,
                "product_data": {"name": purchase.product_title},
            },
            "quantity": 1,
        }
    tags = metadata.for_purchase(purchase.public_id, page.pk)
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": str(purchase.public_id),
        "metadata": tags,
        "payment_intent_data": {"metadata": dict(tags)},
        "success_url": success_url(page),
        "cancel_url": page.get_full_url(),
    }
    if customer_email:
        params["customer_email"] = customer_email
    params.update(checkout_options(tags))
    # The buyer's language, unless the site chose one language for every buyer.
    buyer_locale = languages.stripe_locale(purchase.language)
    if buyer_locale and params.get("locale", "auto") == "auto":
        params["locale"] = buyer_locale
    return params


def checkout_options(tags: dict[str, str]) -> dict[str, Any]:
    """Session params for the site's ``CHECKOUT_OPTIONS`` (validated by the system checks)."""
    options = app_settings.CHECKOUT_OPTIONS or {}
    params: dict[str, Any] = {}
    if options.get("allow_promotion_codes"):
        params["allow_promotion_codes"] = True
    if options.get("automatic_tax"):
        params["automatic_tax"] = {"enabled": True}
    if options.get("tax_id_collection"):
        params["tax_id_collection"] = {"enabled": True}
    if options.get("invoice_creation"):
        # The invoice carries our metadata too, so invoice.payment_succeeded maps back to us.
        params["invoice_creation"] = {"enabled": True, "invoice_data": {"metadata": tags}}
    if options.get("locale"):
        params["locale"] = options["locale"]
    if options.get("require_terms"):
        params["consent_collection"] = {"terms_of_service": "required"}
        if options.get("terms_message"):
            params["custom_text"] = {
                "terms_of_service_acceptance": {"message": options["terms_message"]}
            }
    return params


def idempotency_key(purchase: Purchase) -> str:
    """Stripe's idempotency key for ``purchase``'s Checkout Session.

    A purchase started with a Buy form nonce: the product id and the nonce's key, which every
    POST of that click computes alike (a second POST may be asking before the first has saved
    anything). Otherwise the purchase's own public id.
    """
    if purchase.checkout_nonce:
        return f"wpd-checkout-{purchase.product_id}-{purchase.checkout_nonce}"
    return f"wpd-checkout-{purchase.public_id}"


def nonce_key(
    page: Any, nonce: str, *, cookie: str | None = None, address: str | None = None
) -> str | None:
    """What a purchase stores for the Buy form's ``nonce``; None for a missing or malformed one.

    A SHA-256 over the product, the scope and the nonce. The scope is ``cookie`` (a fingerprint
    of the binding cookie the request carried, ``binding.cookie_fingerprint``) when there is one,
    else the network of ``address`` (the client's IP). See the module docstring for why.
    """
    if not isinstance(nonce, str) or not NONCE_RE.match(nonce):
        return None
    scope = f"cookie:{cookie}" if cookie else f"net:{truncate_ip(address) or ''}"
    value = f"{NONCE_SALT}:{page.pk}:{scope}:{nonce}"
    return hashlib.sha256(value.encode()).hexdigest()


def check_stripe_price(page: Any) -> None:
    """Refuse to sell through a Stripe Price that no longer matches the page's price."""
    try:
        problems = stripe_price_problems(page.stripe_price_id, page.price_amount, page.currency)
    except stripe_api.StripeUnavailable as exc:
        raise CheckoutUnavailable(f"Stripe unavailable checking {page.stripe_price_id}") from exc
    except stripe_api.StripeKeyRejected as exc:
        _log_refused(page, exc)
        raise CheckoutUnavailable(str(exc)) from exc
    if problems:
        logger.error(
            "Product %s (page %s): Stripe Price %s cannot be sold: %s. Checkout refused.",
            page.title,
            page.pk,
            page.stripe_price_id,
            " ".join(str(problem) for problem in problems),
        )
        raise CheckoutUnavailable(f"Price {page.stripe_price_id} does not match")


def ensure_custom_price(page: Any) -> None:
    """Make (once) the Stripe Price a pay-what-you-want ``page`` sells through."""
    try:
        custom_price_id(page)
    except (stripe_api.StripeProblem, ImproperlyConfigured) as exc:
        _log_refused(page, exc)
        raise CheckoutUnavailable(f"No pay-what-you-want Price: {exc}") from exc


def find_open_purchase(page: Any, bound_ids: Iterable[str]) -> Purchase | None:
    """The open purchase of ``page`` at today's price among ``bound_ids`` (the purchases this
    browser started), for a repeated click."""
    ids = [uid for uid in map(metadata.parse_uuid, bound_ids) if uid is not None]
    if not ids:
        return None
    return (
        Purchase.objects.filter(
            public_id__in=ids,
            product_id=page.pk,
            source=Purchase.Source.CHECKOUT,
            status=Purchase.Status.PENDING,
            amount=page.price_amount,
            currency=page.currency,
            created_at__gte=timezone.now() - REUSE_WINDOW,
        )
        .exclude(stripe_checkout_session_id=None)
        .order_by("-created_at")
        .first()
    )


def may_join(purchase: Purchase, page: Any, user: Any) -> bool:
    """Whether a click's POST may join ``purchase``, the one its nonce started: same product at
    today's price, same signed-in user (or none), still pending, at most NONCE_WINDOW old. Its
    session may still be on its way (the other request is asking Stripe)."""
    same_sale = (purchase.product_id, purchase.amount, purchase.currency) == (
        page.pk,
        page.price_amount,
        page.currency,
    )
    return (
        same_sale
        and purchase.source == Purchase.Source.CHECKOUT
        and purchase.status == Purchase.Status.PENDING
        and purchase.user_id == getattr(user, "pk", None)
        and purchase.created_at >= timezone.now() - NONCE_WINDOW
    )


def _create_session(purchase: Purchase, page: Any, email: str | None) -> Any:
    return stripe_api.create_checkout_session(
        session_params(purchase, page, email), idempotency_key=idempotency_key(purchase)
    )


def _reuse(purchase: Purchase, page: Any, email: str | None) -> CheckoutStarted | None:
    try:
        session = _create_session(purchase, page, email)
    except (stripe_api.StripeProblem, ImproperlyConfigured) as exc:
        # The earlier session may well still be payable: leave that purchase alone and start
        # afresh (a changed e-mail makes Stripe refuse the replayed key, for one).
        logger.warning("Could not reuse purchase %s: %s", purchase.public_id, exc)
        return None
    if session.id == purchase.stripe_checkout_session_id and session.url:
        return CheckoutStarted(purchase, session.url, reused=True)
    return None


def _log_refused(page: Any, exc: Exception) -> None:
    if isinstance(exc, stripe_api.StripeKeyRejected):
        # A configuration mistake, not a bug: no traceback, and say what to fix.
        logger.error(
            "Stripe REJECTED the secret key (%s['STRIPE_SECRET_KEY']): %s. Checkout for "
            "product %s (page %s) is unavailable until the key is fixed (`manage.py check` "
            "recognises publishable and malformed keys); no purchase was kept.",
            SETTINGS_NAME,
            exc,
            page.title,
            page.pk,
        )
        return
    logger.error(
        "Checkout for product %s (page %s) refused, no purchase kept: %s",
        page.title,
        page.pk,
        exc,
        exc_info=not isinstance(exc, ImproperlyConfigured),
    )


def start_checkout(
    page: Any,
    *,
    user: Any = None,
    bound_ids: Iterable[str] = (),
    nonce: str = "",
    cookie: str | None = None,
    address: str | None = None,
    language: str = "",
) -> CheckoutStarted:
    """Create (or reuse this click's or this browser's) pending Purchase and its Checkout Session.

    ``user``: the signed-in buyer, if any (their address is passed to Stripe). ``bound_ids``:
    the purchases this browser started (binding cookie). ``nonce``: the Buy form's, as posted;
    ``cookie`` and ``address`` scope it (:func:`nonce_key`). Raises ``CheckoutUnavailable``. A
    Purchase created here is then deleted when Stripe refused the session (a rejected key, a bad
    parameter: nothing exists at Stripe) and marked ``failed`` with the reason when Stripe could
    not be reached (a session may exist, unpaid); either only if no parallel POST of the same
    click got its session meanwhile. ``language``: the buyer's, when the site picks one per
    request (``request.LANGUAGE_CODE``); stored on a new purchase (``languages``).
    """
    if page.pay_what_you_want:
        ensure_custom_price(page)
    elif page.stripe_price_id:
        check_stripe_price(page)
    if user is not None and not user.is_authenticated:
        user = None
    email = (getattr(user, "email", "") or None) if user is not None else None

    key = nonce_key(page, nonce, cookie=cookie, address=address)
    holder = Purchase.objects.filter(checkout_nonce=key).first() if key else None
    if holder is not None:
        joined = _join(holder, page, user, email)
        if joined is not None:
            return joined
        key = None  # spent (paid, failed, older, another price): start afresh without it

    open_purchase = find_open_purchase(page, bound_ids)
    if open_purchase is not None:
        reused = _reuse(open_purchase, page, email)
        if reused is not None:
            return reused

    language = language[: languages.MAX_LENGTH]
    purchase, created = (
        _claim(page, user, key, language)
        if key
        else (_new_purchase(page, user, None, language), True)
    )
    if not created:
        # A parallel POST of the same click created it a moment ago: join that one.
        joined = _join(purchase, page, user, email)
        if joined is not None:
            return joined
        purchase = _new_purchase(page, user, None, language)
    return _open_session(purchase, page, email)


def _new_purchase(page: Any, user: Any, key: str | None = None, language: str = "") -> Purchase:
    return Purchase.objects.create(
        product=page,
        product_title=page.title[:255],
        amount=page.price_amount,
        currency=page.currency,
        user=user,
        source=Purchase.Source.CHECKOUT,
        status=Purchase.Status.PENDING,
        checkout_nonce=key,
        language=language,
    )


def _claim(page: Any, user: Any, key: str, language: str = "") -> tuple[Purchase, bool]:
    """A new pending purchase holding nonce ``key`` (and True), or the one a parallel request
    created with it first (and False).

    The key is unique: of two inserts at once, the second waits for the first to commit
    (PostgreSQL) and fails, and its request joins the first one's purchase instead.
    """
    try:
        with transaction.atomic():
            return _new_purchase(page, user, key, language), True
    except IntegrityError:
        holder = Purchase.objects.filter(checkout_nonce=key).first()
        if holder is None:
            raise
        return holder, False


def _join(purchase: Purchase, page: Any, user: Any, email: str | None) -> CheckoutStarted | None:
    """``purchase`` (the one this click's nonce started) and its session, if it may be joined.

    Stripe is asked with the purchase's idempotency key even when its session is not saved yet
    (the request that created it is still waiting for Stripe): Stripe answers both with the one
    session. When Stripe fails here, the buyer gets "try again" (503) rather than a second
    purchase and session; the request that created the purchase decides its fate.
    """
    if not may_join(purchase, page, user):
        return None
    try:
        session = _create_session(purchase, page, email)
    except (stripe_api.StripeProblem, ImproperlyConfigured) as exc:
        logger.warning("Could not join purchase %s: %s", purchase.public_id, exc)
        raise CheckoutUnavailable(str(exc)) from exc
    if not session.url or not _record_session(purchase, session):
        return None
    return CheckoutStarted(purchase, session.url, reused=True)


def _record_session(purchase: Purchase, session: Any) -> bool:
    """Save ``session`` on ``purchase`` if it is still pending with no other session.

    A conditional UPDATE: it cannot race with :func:`_abandon` (both wait for the row lock), so a
    purchase is never both failed and sent to Stripe's page.
    """
    updated = (
        Purchase.objects.filter(pk=purchase.pk, status=Purchase.Status.PENDING)
        .filter(
            Q(stripe_checkout_session_id__isnull=True) | Q(stripe_checkout_session_id=session.id)
        )
        .update(
            stripe_checkout_session_id=session.id,
            livemode=bool(getattr(session, "livemode", False)),
            updated_at=timezone.now(),
        )
    )
    if updated:
        purchase.stripe_checkout_session_id = session.id
        purchase.livemode = bool(getattr(session, "livemode", False))
    return bool(updated)


def _open_session(purchase: Purchase, page: Any, email: str | None) -> CheckoutStarted:
    """Create the Checkout Session of the new ``purchase``; on failure, mark it failed."""
    try:
        session = _create_session(purchase, page, email)
        if not session.url:
            raise CheckoutUnavailable(f"Checkout Session {session.id} has no url")
        if not _record_session(purchase, session):
            raise CheckoutUnavailable(f"Purchase {purchase.public_id} is no longer pending")
    except (stripe_api.StripeRefused, ImproperlyConfigured) as exc:
        # Stripe made nothing (it refused, or was never asked): the purchase never began, and a
        # row kept for it would only pile up while, say, the key stays wrong.
        _log_refused(page, exc)
        if not _abandon(purchase, delete=True):
            _log_twin(purchase)
        raise CheckoutUnavailable(str(exc)) from exc
    except (stripe_api.StripeUnavailable, CheckoutUnavailable) as exc:
        # A session may exist (an answer lost on the way); the buyer never got its URL, so it
        # cannot be paid. The purchase is kept, failed, with the reason.
        logger.error(
            "Checkout for product %s (page %s) failed; purchase %s marked failed: %s",
            page.title,
            page.pk,
            purchase.public_id,
            exc,
            exc_info=not isinstance(exc, stripe_api.StripeUnavailable),
        )
        if not _abandon(purchase, reason=f"Checkout Session could not be created: {exc}"):
            _log_twin(purchase)
        raise CheckoutUnavailable(str(exc)) from exc
    return CheckoutStarted(purchase, session.url, reused=False)


def _abandon(purchase: Purchase, *, reason: str = "", delete: bool = False) -> bool:
    """Delete ``purchase`` (``delete``) or mark it failed with ``reason``, unless a parallel POST
    of the same click got its session saved meanwhile: then the buyer is on their way to pay it,
    and it must stay pending (False). Under the row lock, like :func:`_record_session`'s update.
    """
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().filter(pk=purchase.pk).first()
        if locked is None:
            return True
        if locked.stripe_checkout_session_id:
            return False
        if delete:
            locked.delete()
            return True
        fulfillment.fail_checkout(locked, reason)
    purchase.refresh_from_db()
    return True


def _log_twin(purchase: Purchase) -> None:
    logger.warning(
        "Purchase %s stays pending: a parallel POST of the same click got its session.",
        purchase.public_id,
    )
