"""The only module that talks to Stripe.

Everything else calls the functions here, never ``stripe`` directly, so that:

- the API version is pinned in one place (``API_VERSION``) and sent with every request;
- network retries are on (a bare ``StripeClient`` does not retry);
- a stand-in (stripe-mock, the sandbox emulator) is reached by setting ``STRIPE_API_BASE``;
- tests intercept at the HTTP layer (``_http_client_override``) so stripe-python runs for real;
- callers catch this module's own exceptions, never stripe-python's: ``StripeUnavailable`` (try
  again later), ``StripeRefused`` (Stripe answered and said no), its subclass
  ``StripePermanent`` (a request that can never succeed: an unknown id, a bad key) and that
  one's ``StripeKeyRejected`` (the API key itself was refused).

No database transaction may be open while these functions run: a Stripe call can take seconds
(and, with retries, longer), and a row lock held that long stalls every other worker.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard

import stripe
from django.core.signals import setting_changed
from django.dispatch import receiver

from .conf import SETTINGS_NAME, app_settings

logger = logging.getLogger(__name__)

#: The Stripe API version this package is written against, sent as ``Stripe-Version``.
API_VERSION = "2026-10-28.endive"

#: Retries stripe-python makes itself on connection errors, 409s and 5xx (with backoff). Create
#: calls carry an idempotency key, so a retried POST never creates a second session.
MAX_NETWORK_RETRIES = 2

#: Seconds to wait for Stripe: to connect, then for its answer. stripe-python's own default is
#: 80 seconds a try: with its retries, a Stripe that accepts connections but does not answer
#: would hold a web request for minutes and outlast django-q2's task timeout (60 s in the
#: README), whose worker is then killed with nothing recorded. Three tries of this stay under it,
#: and a hang becomes ``StripeUnavailable``: retried with backoff like any outage.
REQUEST_TIMEOUT = (5.0, 15.0)

#: Tests set this to a ``stripe.HTTPClient`` (see ``tests/stripe_fake.py``); None in production.
_http_client_override: stripe.HTTPClient | None = None

_clients: dict[tuple[str, str | None, int], stripe.StripeClient] = {}
_clients_lock = threading.Lock()


class StripeProblem(Exception):
    """Base of the exceptions this module raises for a Stripe request that did not succeed."""


class StripeUnavailable(StripeProblem):
    """Stripe could not be reached or answered with a server-side error (after retries).

    Raised for connection errors, rate limiting and 5xx answers; the original is chained as
    ``__cause__``. Callers show "unavailable, try again" or leave the work for a retry.
    """


class StripeRefused(StripeProblem):
    """Stripe answered and refused the request (a 4xx): retrying the same request will not help
    unless something else changes first (an idempotency conflict, a declined card).

    ``code`` is Stripe's error code (``resource_missing``…) and ``user_message`` a message safe to
    show an editor, when Stripe sent them.
    """

    def __init__(self, message: str, *, code: str = "", user_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.user_message = user_message or message


class StripePermanent(StripeRefused):
    """A refusal no retry can fix: an unknown object or bad id, a bad API key, no permission."""


class StripeKeyRejected(StripePermanent):
    """Stripe refused the API key itself: a wrong, revoked or rolled key (401), or a restricted
    key without the permission the request needs (403). Stripe did nothing with the request."""


class InvalidWebhook(Exception):
    """A webhook body that must not be trusted: no, a forged, a stale or a future signature, or a
    body that cannot be a Stripe event.

    ``reason`` is a short, non-secret explanation suitable for a 400 response and the log.
    """

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The HTTP status to answer with: 400, or 413 for a body too large to read.
        self.status = status


def get_client() -> stripe.StripeClient:
    """A configured ``StripeClient``, cached per secret key, API base and HTTP client.

    Raises ``ImproperlyConfigured`` when ``STRIPE_SECRET_KEY`` is not set.
    """
    api_key = app_settings.require_secret_key()
    api_base: str | None = app_settings.STRIPE_API_BASE or None
    override = _http_client_override
    cache_key = (api_key, api_base, id(override))
    client = _clients.get(cache_key)
    if client is None:
        with _clients_lock:
            client = _clients.get(cache_key)
            if client is None:
                client = stripe.StripeClient(
                    api_key,
                    stripe_version=API_VERSION,
                    base_addresses={"api": api_base} if api_base else None,
                    max_network_retries=MAX_NETWORK_RETRIES,
                    http_client=override or stripe.RequestsClient(timeout=REQUEST_TIMEOUT),
                )
                _clients[cache_key] = client
    return client


def reset_clients() -> None:
    """Forget cached clients (settings changed, or a test swapped the HTTP client)."""
    with _clients_lock:
        _clients.clear()


@receiver(setting_changed)
def _drop_clients_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        reset_clients()


#: A secret (``sk_``) or restricted (``rk_``) API key as Stripe issues them: the mode, then
#: letters and digits (underscores in placeholders), no spaces or line breaks.
SECRET_KEY = re.compile(r"[sr]k_(?:test|live)_[A-Za-z0-9_]{1,247}")


def key_mode(key: Any) -> str:
    """What an API key is, by its prefix: ``"live"`` or ``"test"`` for a secret (``sk_``) or
    restricted (``rk_``) key, ``"publishable"`` for a ``pk_`` key, ``""`` for anything else."""
    key = key if isinstance(key, str) else ""
    if key.startswith(("sk_live_", "rk_live_")):
        return "live"
    if key.startswith(("sk_test_", "rk_test_")):
        return "test"
    return "publishable" if key.startswith("pk_") else ""


def secret_key_is_live() -> bool:
    """Whether the configured key is a live-mode key; test keys and placeholders are not."""
    return key_mode(app_settings.STRIPE_SECRET_KEY) == "live"


#: stripe-python errors that mean "this request can never succeed".
_PERMANENT = (stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError)


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        logger.warning("Stripe unavailable: %s", exc)
        raise StripeUnavailable(str(exc.user_message or exc)) from exc
    except stripe.StripeError as exc:
        # APIError also covers unexpected 4xx answers; only server-side trouble is transient.
        if isinstance(exc, stripe.APIError) and (exc.http_status is None or exc.http_status >= 500):
            logger.warning("Stripe unavailable: %s", exc)
            raise StripeUnavailable(str(exc.user_message or exc)) from exc
        refused = StripePermanent if isinstance(exc, _PERMANENT) else StripeRefused
        if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
            refused = StripeKeyRejected
        raise refused(str(exc), code=exc.code or "", user_message=exc.user_message or "") from exc


def create_checkout_session(
    params: dict[str, Any], *, idempotency_key: str
) -> stripe.checkout.Session:
    """Create a Checkout Session from ``params`` (built by the caller, passed through as is).

    ``idempotency_key`` must be deterministic for the purchase, so a retried request (ours or
    stripe-python's) returns the same session instead of creating a second one.

    Raises ``StripeUnavailable`` when Stripe cannot be reached, ``StripeRefused`` (or
    ``StripePermanent``) for requests Stripe refused.
    """
    with _translate_errors():
        return get_client().v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]  # callers build the dict; Stripe validates it
            {"idempotency_key": idempotency_key},
        )


def retrieve_checkout_session(session_id: str) -> stripe.checkout.Session:
    """Fetch a Checkout Session with its ``line_items``, its ``payment_intent`` and that
    PaymentIntent's ``latest_charge`` expanded: one call tells whether it is paid, refunded or
    disputed, and what the receipt needs (the charge's ``receipt_url``).

    Raises ``StripeUnavailable`` when Stripe cannot be reached; ``StripePermanent`` for an
    unknown session id.
    """
    with _translate_errors():
        return get_client().v1.checkout.sessions.retrieve(
            session_id, {"expand": ["line_items", "payment_intent.latest_charge"]}
        )


def list_checkout_sessions_for_payment_intent(payment_intent_id: str) -> list[Any]:
    """The Checkout Sessions that created ``payment_intent_id`` (at most one, in practice).

    Used to map a PaymentIntent event back to its session when no Purchase records the
    PaymentIntent yet. Raises ``StripeUnavailable`` or ``StripeRefused``.
    """
    with _translate_errors():
        result = get_client().v1.checkout.sessions.list(
            {"payment_intent": payment_intent_id, "limit": 3}
        )
    return list(result.data)


def retrieve_payment_intent(payment_intent_id: str) -> stripe.PaymentIntent:
    """Fetch a PaymentIntent with its ``latest_charge`` expanded (refunded? disputed?).

    Raises ``StripeUnavailable`` or ``StripeRefused``.
    """
    with _translate_errors():
        return get_client().v1.payment_intents.retrieve(
            payment_intent_id, {"expand": ["latest_charge"]}
        )


def list_disputes_for_payment_intent(payment_intent_id: str) -> list[stripe.Dispute]:
    """The disputes on ``payment_intent_id``'s charges, newest first.

    Raises ``StripeUnavailable`` or ``StripeRefused``.
    """
    with _translate_errors():
        result = get_client().v1.disputes.list({"payment_intent": payment_intent_id, "limit": 10})
    return sorted(result.data, key=lambda d: getattr(d, "created", 0) or 0, reverse=True)


@dataclass(frozen=True)
class EventPage:
    """One page of Stripe's list of events, newest first; ``events`` are plain dicts shaped like
    a webhook's body, held to the same rules (``inbox.store`` takes them as they are)."""

    events: list[dict[str, Any]]
    has_more: bool
    #: The id of the page's last event, the cursor for the next page (even when that event
    #: was left out).
    last_id: str | None = None
    #: Events left out: they could not be a webhook's body (see :func:`verify_webhook`).
    unstorable: int = 0


#: Stripe's largest page.
EVENT_PAGE_SIZE = 100


def list_events(
    *,
    types: Sequence[str],
    created_gt: int,
    created_lte: int | None = None,
    starting_after: str | None = None,
    limit: int = EVENT_PAGE_SIZE,
) -> EventPage:
    """One page of the events of ``types`` created after ``created_gt`` (and up to
    ``created_lte``), Unix seconds; ``starting_after``: the last event id of the previous page.

    Stripe keeps events for 30 days and lists them newest first, each rendered in the API
    version of its creation (as its webhook was). Raises ``StripeUnavailable``, or
    ``StripeRefused`` (a restricted key without the "Events: read" permission, for one).
    """
    created: dict[str, int] = {"gt": int(created_gt)}
    if created_lte is not None:
        created["lte"] = int(created_lte)
    params: dict[str, Any] = {"types": list(types), "created": created, "limit": int(limit)}
    if starting_after:
        params["starting_after"] = starting_after
    with _translate_errors():
        page = get_client().v1.events.list(params)  # type: ignore[arg-type]
    listed = [event.to_dict(for_json=True) for event in page.data]
    events = [event for event in map(_listed_event, listed) if event is not None]
    last_id = listed[-1].get("id") if listed else None
    return EventPage(
        events=events,
        has_more=bool(page.has_more),
        last_id=last_id if isinstance(last_id, str) else None,
        unstorable=len(listed) - len(events),
    )


def _listed_event(event: dict[str, Any]) -> dict[str, Any] | None:
    """A listed event held to a webhook body's rules (no signature: it came from Stripe's API
    with our key): an ``evt_`` id, a type, bounded nesting, storable strings. None otherwise."""
    try:
        if not EVENT_ID.fullmatch(str(event.get("id") or "")):
            raise InvalidWebhook("event id is not a Stripe event id")
        if not EVENT_TYPE.fullmatch(str(event.get("type") or "")):
            raise InvalidWebhook("event type is not a Stripe event type")
        _check_depth(event)
        return _storable(event)  # type: ignore[no-any-return]
    except InvalidWebhook as exc:
        logger.error("Stripe listed an event that cannot be stored (%s): left out", exc.reason)
        return None


#: The reasons Stripe accepts on a refund (``reason``); "fraudulent" also adds the card and the
#: email address to the account's Radar block lists.
REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")


def create_refund(
    payment_intent_id: str,
    *,
    amount: int,
    reason: str,
    idempotency_key: str,
    metadata: dict[str, str] | None = None,
) -> stripe.Refund:
    """Refund ``amount`` (minor units) of ``payment_intent_id``'s charge, for ``reason`` (one of
    ``REFUND_REASONS``).

    ``idempotency_key`` must be the same for a repeated request (a confirmation sent twice, a
    retry): Stripe then answers with the refund it already made instead of refunding again.
    Raises ``StripeUnavailable`` (nothing known: the same key may be sent again),
    ``StripeRefused`` (``code`` ``charge_already_refunded``, ``amount_too_large``,
    ``charge_disputed``…) or ``StripePermanent`` (an unknown PaymentIntent).
    """
    if reason not in REFUND_REASONS:
        raise ValueError(f"refund reason {reason!r} is not one of {REFUND_REASONS}")
    params: dict[str, Any] = {"payment_intent": payment_intent_id, "amount": int(amount)}
    params["reason"] = reason
    if metadata:
        params["metadata"] = dict(metadata)
    with _translate_errors():
        return get_client().v1.refunds.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )


def create_custom_price(
    *,
    currency: str,
    minimum: int,
    product_name: str,
    metadata: dict[str, str],
    idempotency_key: str,
) -> stripe.Price:
    """Create a one-time Price whose amount the buyer chooses, at least ``minimum`` minor units
    of ``currency`` (the minimum is also the amount Checkout suggests).

    Checkout's inline ``price_data`` has no ``custom_unit_amount``, so pay-what-you-want needs
    a stored Price. ``idempotency_key`` names the product, currency and minimum, so parallel
    first checkouts make one Price. Raises ``StripeUnavailable`` or ``StripeRefused``.
    """
    params = {
        "currency": currency.lower(),
        "custom_unit_amount": {"enabled": True, "minimum": minimum, "preset": minimum},
        "product_data": {"name": product_name},
        "metadata": metadata,
    }
    with _translate_errors():
        return get_client().v1.prices.create(
            params,  # type: ignore[arg-type]
            {"idempotency_key": idempotency_key},
        )


def retrieve_price(price_id: str) -> stripe.Price:
    """Fetch a Price. Raises ``StripeUnavailable`` or ``StripeRefused``."""
    with _translate_errors():
        return get_client().v1.prices.retrieve(price_id)


#: The largest webhook body accepted (1 MiB). Stripe's events are a few kilobytes (webhook
#: payloads never carry expansions, metadata is capped at 50 keys of 500 characters); anything
#: near this size is not one of them, and is refused before it is read.
MAX_WEBHOOK_BYTES = 1024 * 1024
#: The deepest nesting of objects and lists accepted in a webhook body. Stripe's objects nest a
#: handful of levels (event, data, object, payment_method_options, card, ...).
MAX_WEBHOOK_DEPTH = 64
#: A Stripe event id: ``evt_`` and letters, digits or underscores, at most 255 characters (the
#: longest id Stripe documents, and the ``StripeEvent.stripe_id`` column).
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")
#: A Stripe event type (``checkout.session.completed``): short, no spaces or control characters.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: Characters PostgreSQL cannot store in ``jsonb`` or ``text``: NUL and unpaired UTF-16
#: surrogates (which JSON's ``\uXXXX`` escapes can produce but UTF-8 cannot encode).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: The JSON escapes that can produce them (a false alarm, e.g. an escaped backslash before
#: "u0000" or a valid surrogate pair, only costs a closer look).
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def looks_like_id(value: Any, *prefixes: str) -> TypeGuard[str]:
    """Whether ``value`` has the shape of a Stripe object id starting with one of ``prefixes``
    (``"cs_"``, ``"pi_"``…): letters, digits and underscores, at most 255 characters."""
    return (
        isinstance(value, str)
        and len(value) <= 255
        and value.startswith(prefixes)
        and re.fullmatch(r"[A-Za-z0-9_]+", value) is not None
    )


def webhook_too_large(length: int) -> bool:
    """Whether a webhook body of ``length`` bytes is refused without reading it."""
    return length > MAX_WEBHOOK_BYTES


@dataclass(frozen=True)
class WebhookBody:
    """A verified webhook: the event, and the JSON text to store for it."""

    event: dict[str, Any]
    #: The body as received when it can be stored as it is (it parsed strictly, so reading it
    #: back gives ``event``); None when characters had to be replaced (store ``event`` then).
    text: str | None


def verify_webhook(payload: bytes, sig_header: str | None) -> dict[str, Any]:
    """Check a webhook's ``Stripe-Signature`` and return the parsed JSON body as a plain dict
    (see :func:`read_webhook`)."""
    return read_webhook(payload, sig_header).event


def read_webhook(payload: bytes, sig_header: str | None) -> WebhookBody:
    """Check a webhook's ``Stripe-Signature`` and parse its body as a plain dict.

    Every secret in ``STRIPE_WEBHOOK_SECRETS`` is tried, so during a rotation both the old and
    the new secret verify (Stripe then sends one ``v1`` signature per active secret). A
    signature older or newer than ``WEBHOOK_TOLERANCE`` is refused (stripe-python checks only
    the past).

    Raises ``InvalidWebhook`` for a missing, forged, stale or future signature and for a body
    that cannot be a Stripe event: larger than ``MAX_WEBHOOK_BYTES``, not UTF-8, not strict JSON
    (``NaN``, numbers out of range, a key given twice), nested deeper than
    ``MAX_WEBHOOK_DEPTH``, not an object with an ``evt_`` id and a type. NUL characters and
    unpaired surrogates in strings (which PostgreSQL cannot store) become U+FFFD.
    """
    if webhook_too_large(len(payload)):
        raise InvalidWebhook("body too large", status=413)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWebhook("body is not UTF-8") from None
    _check_signature(text, sig_header)
    event, numbers_as_written = _parse_event(text)
    # Both can only come from a \u escape (raw NUL is not JSON; UTF-8 has no surrogates).
    if _UNSTORABLE_ESCAPE.search(text):
        return WebhookBody(_storable(event), None)
    # A body with other escapes (``\u0026``, ``\/``) is serialised too: its text would hide
    # what it says from a search of the stored payload (buyer data's erasure on SQLite).
    as_written = numbers_as_written and "\\u" not in text and "\\/" not in text
    return WebhookBody(event, text if as_written else None)


def _check_signature(text: str, sig_header: str | None) -> None:
    if not sig_header:
        raise InvalidWebhook("missing signature")
    secrets = app_settings.webhook_secrets
    if not secrets:
        # A configuration mistake (the system checks report it); nothing can be trusted.
        raise InvalidWebhook("no webhook secret configured")
    tolerance = int(app_settings.WEBHOOK_TOLERANCE)
    reason = "bad signature"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, sig_header, secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            if "tolerance" in str(exc):
                # The signature matched this secret but is too old: a replay, or a bad clock.
                reason = "stale signature"
            elif "extract" in str(exc) or "No signatures found with expected scheme" in str(exc):
                reason = "malformed signature header"
            continue
        break
    else:
        raise InvalidWebhook(reason)
    # Signed by a secret we hold, so the header parses as stripe-python read it (its first t=).
    # A timestamp far ahead would keep a captured request replayable long after it was sent.
    timestamp = int(next(i.split("=", 2)[1] for i in sig_header.split(",") if i[:2] == "t="))
    if timestamp > time.time() + tolerance:
        raise InvalidWebhook("signature from the future")


class _NotStrictJson(ValueError):
    """Raised while parsing for JSON that parses in Python but is not a Stripe event's."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Parsers disagree on which copy wins; Stripe never sends a key twice.
        raise _NotStrictJson("duplicate key in body")
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStrictJson("number out of range")
    return value


def _bounded_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        raise _NotStrictJson("number out of range") from None


def _refuse_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity: Python accepts them, JSON (and PostgreSQL's jsonb) does not.
    raise _NotStrictJson("body is not JSON")


def _parse_event(text: str) -> tuple[dict[str, Any], bool]:
    """The event, and whether PostgreSQL's ``jsonb`` takes every number as written (a float
    with an exponent or a hundred digits may be out of its range though Python reads it)."""
    odd_floats: list[str] = []

    def parse_float(token: str) -> float:
        if len(token) > 100 or "e" in token or "E" in token:
            odd_floats.append(token)
        return _finite_float(token)

    try:
        data = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_float=parse_float,
            parse_int=_bounded_int,
            parse_constant=_refuse_constant,
        )
    except _NotStrictJson as exc:
        raise InvalidWebhook(str(exc)) from None
    except RecursionError:
        raise InvalidWebhook("body nested too deeply") from None
    except ValueError:
        raise InvalidWebhook("body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise InvalidWebhook("body is not a Stripe event")
    if not EVENT_ID.fullmatch(data["id"]):
        raise InvalidWebhook("event id is not a Stripe event id")
    if not isinstance(data.get("type"), str) or not EVENT_TYPE.fullmatch(data["type"]):
        raise InvalidWebhook("event type is not a Stripe event type")
    _check_depth(data)
    return data, not odd_floats


def _check_depth(root: Any) -> None:
    """Refuse a body whose objects and lists nest deeper than ``MAX_WEBHOOK_DEPTH``."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_WEBHOOK_DEPTH:
            raise InvalidWebhook("body nested too deeply")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def _storable(node: Any) -> Any:
    """``node`` with NUL and unpaired surrogates in its strings replaced by U+FFFD."""
    if isinstance(node, str):
        return _UNSTORABLE.sub("\ufffd", node)
    if isinstance(node, list):
        return [_storable(item) for item in node]
    if isinstance(node, dict):
        result = {_storable(k): _storable(v) for k, v in node.items()}
        if len(result) != len(node):  # two keys that differed only by what was replaced
            raise InvalidWebhook("duplicate key in body")
        return result
    return node


def retrieve_account() -> Any:
    """The Stripe account the configured secret key belongs to (proves the key works)."""
    with _translate_errors():
        return get_client().v1.accounts.retrieve_current()


def list_webhook_endpoints() -> list[Any]:
    """The webhook endpoints Stripe has on file for this account (first 100)."""
    with _translate_errors():
        return list(get_client().v1.webhook_endpoints.list({"limit": 100}).data)
