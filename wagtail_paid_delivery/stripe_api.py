"""The only module that talks to Stripe.

Everything else calls the functions here, never ``stripe`` directly, so that:

- the API version is pinned in one place (``API_VERSION``) and sent with every request;
- network retries are on (a bare ``StripeClient`` does not retry);
- a stand-in (stripe-mock, the sandbox emulator) is reached by setting ``STRIPE_API_BASE``;
- tests intercept at the HTTP layer (``_http_client_override``) so stripe-python runs for real;
- callers see two outcomes to handle: ``StripeUnavailable`` (try again later) and Stripe's own
  request errors (``stripe.InvalidRequestError`` and friends, a bug or a bad id: do not retry).

No database transaction may be open while these functions run: a Stripe call can take seconds
(and, with retries, longer), and a row lock held that long stalls every other worker.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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

#: Tests set this to a ``stripe.HTTPClient`` (see ``tests/stripe_fake.py``); None in production.
_http_client_override: stripe.HTTPClient | None = None

_clients: dict[tuple[str, str | None, int], stripe.StripeClient] = {}
_clients_lock = threading.Lock()


class StripeUnavailable(Exception):
    """Stripe could not be reached or answered with a server-side error (after retries).

    Raised for ``stripe.APIConnectionError``, ``stripe.RateLimitError`` and ``stripe.APIError``
    with no status or a 5xx status; the original is chained as ``__cause__``. Callers show
    "checkout unavailable, try again" or leave the work for a retry.
    """


class InvalidWebhook(Exception):
    """A webhook body that must not be trusted: no, a forged or a stale signature, or bad JSON.

    ``reason`` is a short, non-secret explanation suitable for a 400 response and the log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def get_client() -> stripe.StripeClient:
    """A configured ``StripeClient``, cached per secret key, API base and HTTP client.

    Raises ``ImproperlyConfigured`` when ``STRIPE_SECRET_KEY`` is not set.
    """
    api_key = app_settings.require_secret_key()
    api_base: str | None = app_settings.STRIPE_API_BASE or None
    http_client = _http_client_override
    cache_key = (api_key, api_base, id(http_client))
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
                    http_client=http_client,
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


def secret_key_is_live() -> bool:
    """Whether the configured key is a live-mode key; test keys and placeholders are not."""
    key = str(app_settings.STRIPE_SECRET_KEY or "")
    return key.startswith(("sk_live_", "rk_live_"))


@contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        logger.warning("Stripe unavailable: %s", exc)
        raise StripeUnavailable(str(exc.user_message or exc)) from exc
    except stripe.APIError as exc:
        # APIError also covers unexpected 4xx answers; only server-side trouble is transient.
        if exc.http_status is None or exc.http_status >= 500:
            logger.warning("Stripe unavailable: %s", exc)
            raise StripeUnavailable(str(exc.user_message or exc)) from exc
        raise


def create_checkout_session(
    params: dict[str, Any], *, idempotency_key: str
) -> stripe.checkout.Session:
    """Create a Checkout Session from ``params`` (built by the caller, passed through as is).

    ``idempotency_key`` must be deterministic for the purchase, so a retried request (ours or
    stripe-python's) returns the same session instead of creating a second one.

    Raises ``StripeUnavailable`` when Stripe cannot be reached; ``stripe.InvalidRequestError``
    (and other ``stripe.StripeError`` subclasses) propagate for requests Stripe refused.
    """
    with _translate_errors():
        return get_client().v1.checkout.sessions.create(
            params,  # type: ignore[arg-type]  # callers build the dict; Stripe validates it
            {"idempotency_key": idempotency_key},
        )


def retrieve_checkout_session(session_id: str) -> stripe.checkout.Session:
    """Fetch a Checkout Session with its ``line_items`` and ``payment_intent`` expanded.

    Raises ``StripeUnavailable`` when Stripe cannot be reached; ``stripe.InvalidRequestError``
    for an unknown session id.
    """
    with _translate_errors():
        return get_client().v1.checkout.sessions.retrieve(
            session_id, {"expand": ["line_items", "payment_intent"]}
        )


def list_checkout_sessions_for_payment_intent(payment_intent_id: str) -> list[Any]:
    """The Checkout Sessions that created ``payment_intent_id`` (at most one, in practice).

    Used to map a PaymentIntent event back to its session when no Purchase records the
    PaymentIntent yet. Raises ``StripeUnavailable`` or ``stripe.StripeError``.
    """
    with _translate_errors():
        result = get_client().v1.checkout.sessions.list(
            {"payment_intent": payment_intent_id, "limit": 3}
        )
    return list(result.data)


def retrieve_payment_intent(payment_intent_id: str) -> stripe.PaymentIntent:
    """Fetch a PaymentIntent with its ``latest_charge`` expanded (refunded? disputed?).

    Raises ``StripeUnavailable`` or ``stripe.InvalidRequestError``.
    """
    with _translate_errors():
        return get_client().v1.payment_intents.retrieve(
            payment_intent_id, {"expand": ["latest_charge"]}
        )


def list_disputes_for_payment_intent(payment_intent_id: str) -> list[stripe.Dispute]:
    """The disputes on ``payment_intent_id``'s charges, newest first.

    Raises ``StripeUnavailable`` or ``stripe.StripeError``.
    """
    with _translate_errors():
        result = get_client().v1.disputes.list({"payment_intent": payment_intent_id, "limit": 10})
    return sorted(result.data, key=lambda d: getattr(d, "created", 0) or 0, reverse=True)


def emulator_control(session_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ask the Stripe stand-in at ``STRIPE_API_BASE`` to act on a session as a buyer would.

    ``POST {STRIPE_API_BASE}/_emulator/sessions/<id>/<action>``, authenticated with the secret
    key; the stand-in then sends the signed webhooks that follow. Real Stripe has no such
    endpoint (use the Stripe CLI and Dashboard there). Raises ``ImproperlyConfigured`` when
    ``STRIPE_API_BASE`` is not set, ``StripeUnavailable``, or ``stripe.StripeError`` for an
    action the stand-in refused.
    """
    from django.core.exceptions import ImproperlyConfigured

    if not app_settings.STRIPE_API_BASE:
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}['STRIPE_API_BASE'] is not set: there is no Stripe stand-in to "
            "drive (real Stripe: use the Stripe CLI or Dashboard)."
        )
    with _translate_errors():
        response = get_client().raw_request(
            "post", f"/_emulator/sessions/{session_id}/{action}", **params
        )
    data = json.loads(response.body)
    return data if isinstance(data, dict) else {}


def retrieve_price(price_id: str) -> stripe.Price:
    """Fetch a Price. Raises ``StripeUnavailable`` or ``stripe.InvalidRequestError``."""
    with _translate_errors():
        return get_client().v1.prices.retrieve(price_id)


def verify_webhook(payload: bytes, sig_header: str | None) -> dict[str, Any]:
    """Check a webhook's ``Stripe-Signature`` and return the parsed JSON body as a plain dict.

    Every secret in ``STRIPE_WEBHOOK_SECRETS`` is tried, so during a rotation both the old and
    the new secret verify (Stripe then sends one ``v1`` signature per active secret). Raises
    ``InvalidWebhook`` for a missing, forged or stale signature and for a body that is not a
    JSON object.
    """
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
            stripe.WebhookSignature.verify_header(payload, sig_header, secret, tolerance)
        except stripe.SignatureVerificationError as exc:
            if "tolerance" in str(exc):
                # The signature matched this secret but is too old: a replay, or a bad clock.
                reason = "stale signature"
            elif "extract" in str(exc) or "No signatures found with expected scheme" in str(exc):
                reason = "malformed signature header"
            continue
        except UnicodeDecodeError:
            raise InvalidWebhook("body is not UTF-8") from None
        break
    else:
        raise InvalidWebhook(reason)
    try:
        data = json.loads(payload)
    except ValueError:
        raise InvalidWebhook("body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise InvalidWebhook("body is not a Stripe event")
    return data


def construct_event(payload: bytes, sig_header: str | None) -> stripe.Event:
    """Verify a webhook (see ``verify_webhook``) and return it as a ``stripe.Event``.

    Raises ``InvalidWebhook`` for anything that must not be trusted.
    """
    data = verify_webhook(payload, sig_header)
    if data.get("object") != "event":
        raise InvalidWebhook("body is not a Stripe event")
    return stripe.Event.construct_from(data, None, stripe_version=API_VERSION)
