"""stripe_api: the configured client, the calls we make, and webhook verification."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests.stripe_fake import event_for, sign_payload
from wagtail_paid_delivery import stripe_api

SETTINGS = {
    "STRIPE_SECRET_KEY": "sk_test_tests",
    "STRIPE_WEBHOOK_SECRETS": ["whsec_tests"],
    "INSTALLATION_ID": "tests",
}

PARAMS = {
    "mode": "payment",
    "client_reference_id": "8b0f1c9e-7d43-4a55-9a4e-6c1f3f2b7a10",
    "customer_email": "ada@example.com",
    "line_items": [
        {
            "quantity": 1,
            "price_data": {
                "currency": "usd",
                "unit_amount": 1250,
                "product_data": {"name": "Field guide"},
            },
        }
    ],
    "metadata": {"wpd_installation": "tests", "wpd_purchase": "8b0f", "wpd_product": "3"},
    "payment_intent_data": {"metadata": {"wpd_installation": "tests", "wpd_purchase": "8b0f"}},
    "success_url": "http://testserver/shop/thanks/?session_id={CHECKOUT_SESSION_ID}",
    "cancel_url": "http://testserver/",
}


def test_client_is_pinned_retrying_and_cached(fake_stripe):
    client = stripe_api.get_client()
    assert client is stripe_api.get_client()
    stripe_api.create_checkout_session(PARAMS, idempotency_key="k")
    (call,) = fake_stripe.requests
    assert call.headers["stripe-version"] == stripe_api.API_VERSION == "2026-10-28.endive"
    assert call.headers["authorization"] == "Bearer sk_test_tests"


def test_client_cache_follows_settings(fake_stripe):
    before = stripe_api.get_client()
    with override_settings(
        WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_API_BASE": "http://127.0.0.1:12111"}
    ):
        during = stripe_api.get_client()
        assert during is not before
        with pytest.raises(stripe_api.StripePermanent):
            stripe_api.retrieve_price("price_missing")
    assert fake_stripe.requests[-1].path == "/v1/prices/price_missing"
    assert stripe_api.get_client() is not during


def test_api_base_setting_is_used(monkeypatch):
    seen = []

    class Recorder(stripe.HTTPClient):
        name = "recorder"

        def request(self, method, url, headers, post_data=None, *, _usage=None):
            seen.append(url)
            return json.dumps({"id": "price_1", "object": "price"}), 200, {}

        def close(self):
            pass

    monkeypatch.setattr(stripe_api, "_http_client_override", Recorder())
    with override_settings(
        WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_API_BASE": "http://127.0.0.1:12111"}
    ):
        assert stripe_api.retrieve_price("price_1").id == "price_1"
    assert seen == ["http://127.0.0.1:12111/v1/prices/price_1"]


def test_missing_secret_key_names_the_setting():
    with (
        override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_SECRET_KEY": ""}),
        pytest.raises(ImproperlyConfigured, match="STRIPE_SECRET_KEY"),
    ):
        stripe_api.get_client()


def test_create_checkout_session_sends_params_and_honours_idempotency_key(fake_stripe):
    first = stripe_api.create_checkout_session(PARAMS, idempotency_key="purchase-1")
    again = stripe_api.create_checkout_session(PARAMS, idempotency_key="purchase-1")
    other = stripe_api.create_checkout_session(PARAMS, idempotency_key="purchase-2")
    assert first.id == again.id != other.id
    assert len(fake_stripe.sessions) == 2
    assert first.url.startswith("https://checkout.stripe.com/")
    assert first.metadata["wpd_installation"] == "tests"
    assert first.client_reference_id == PARAMS["client_reference_id"]
    sent = fake_stripe.requests[0]
    assert sent.idempotency_key == "purchase-1"
    assert sent.params["line_items"][0]["price_data"]["unit_amount"] == "1250"
    assert sent.params["payment_intent_data"]["metadata"]["wpd_purchase"] == "8b0f"


def test_idempotency_key_reused_with_other_params_is_refused(fake_stripe):
    stripe_api.create_checkout_session(PARAMS, idempotency_key="k")
    with pytest.raises(stripe_api.StripeRefused):
        stripe_api.create_checkout_session(
            {**PARAMS, "customer_email": "x@example.com"}, idempotency_key="k"
        )


def test_retrieve_checkout_session_expands_line_items_and_payment_intent(fake_stripe):
    session = stripe_api.create_checkout_session(PARAMS, idempotency_key="k")
    fake_stripe.pay(session.id, email="ada@example.com")
    fetched = stripe_api.retrieve_checkout_session(session.id)
    assert fetched.payment_status == "paid" and fetched.status == "complete"
    assert fetched.customer_details.email == "ada@example.com"
    (item,) = fetched.line_items.data
    assert (item.quantity, item.currency, item.price.unit_amount) == (1, "usd", 1250)
    assert fetched.payment_intent.id.startswith("pi_")
    assert fetched.payment_intent.metadata["wpd_purchase"] == "8b0f"


def test_retrieve_price(fake_stripe):
    fake_stripe.add_price(1999, "eur", price_id="price_Guide")
    price = stripe_api.retrieve_price("price_Guide")
    assert (price.unit_amount, price.currency, price.type) == (1999, "eur", "one_time")


def test_unknown_session_raises_invalid_request_error(fake_stripe):
    with pytest.raises(stripe_api.StripePermanent):
        stripe_api.retrieve_checkout_session("cs_test_missing")
    assert len(fake_stripe.requests) == 1  # a 404 is not retried


@pytest.mark.parametrize("mode", ["connection", "500"])
def test_stripe_down_raises_stripe_unavailable_after_retries(fake_stripe, mode):
    fake_stripe.set_down(True, mode=mode)
    with pytest.raises(stripe_api.StripeUnavailable) as info:
        stripe_api.create_checkout_session(PARAMS, idempotency_key="k")
    assert isinstance(info.value.__cause__, stripe.APIConnectionError | stripe.APIError)
    assert len(fake_stripe.requests) == 1 + stripe_api.MAX_NETWORK_RETRIES
    # Every retry carried the same idempotency key.
    assert {r.idempotency_key for r in fake_stripe.requests} == {"k"}


def test_stripe_recovers_within_retries(fake_stripe, monkeypatch):
    original = fake_stripe._route
    failures = iter([True])

    def flaky(*args):
        if next(failures, False):
            return fake_stripe._error(500, "api_error", "blip")
        return original(*args)

    monkeypatch.setattr(fake_stripe, "_route", flaky)
    session = stripe_api.create_checkout_session(PARAMS, idempotency_key="k")
    assert session.id in fake_stripe.sessions
    assert len(fake_stripe.requests) == 2


# Webhook verification ---------------------------------------------------------------------


def _payload() -> bytes:
    return json.dumps(event_for({"id": "cs_test_1", "object": "checkout.session"})).encode()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing signature"),
        ("", "missing signature"),
        ("t=1,v0=abc", "malformed signature header"),
        ("nonsense", "malformed signature header"),
    ],
)
def test_verify_webhook_rejects_missing_and_malformed_headers(header, reason):
    with pytest.raises(stripe_api.InvalidWebhook) as info:
        stripe_api.verify_webhook(_payload(), header)
    assert info.value.reason == reason


def test_verify_webhook_rejects_forged_stale_and_altered():
    payload = _payload()
    with pytest.raises(stripe_api.InvalidWebhook, match="bad signature"):
        stripe_api.verify_webhook(payload, sign_payload(payload, "whsec_other"))
    stale = sign_payload(payload, timestamp=int(time.time()) - 400)
    with pytest.raises(stripe_api.InvalidWebhook, match="stale signature"):
        stripe_api.verify_webhook(payload, stale)
    with pytest.raises(stripe_api.InvalidWebhook, match="bad signature"):
        stripe_api.verify_webhook(payload + b" ", sign_payload(payload))


def test_verify_webhook_tolerance_comes_from_settings():
    payload = _payload()
    header = sign_payload(payload, timestamp=int(time.time()) - 400)
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "WEBHOOK_TOLERANCE": 600}):
        assert stripe_api.verify_webhook(payload, header)["id"]


def test_verify_webhook_tries_every_configured_secret():
    payload = _payload()
    with override_settings(
        WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_WEBHOOK_SECRETS": ["whsec_old", "whsec_new"]}
    ):
        for secret in ("whsec_old", "whsec_new"):
            assert stripe_api.verify_webhook(payload, sign_payload(payload, secret))
        with pytest.raises(stripe_api.InvalidWebhook):
            stripe_api.verify_webhook(payload, sign_payload(payload, "whsec_tests"))


def test_verify_webhook_accepts_any_of_several_v1_signatures():
    payload = _payload()
    ts = int(time.time())
    wrong = sign_payload(payload, "whsec_gone", ts).split(",")[1]
    header = f"{sign_payload(payload, 'whsec_tests', ts)},{wrong}"
    assert stripe_api.verify_webhook(payload, header)


def test_verify_webhook_without_configured_secret_trusts_nothing():
    payload = _payload()
    with (
        override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_WEBHOOK_SECRETS": []}),
        pytest.raises(stripe_api.InvalidWebhook, match="no webhook secret"),
    ):
        stripe_api.verify_webhook(payload, sign_payload(payload))


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b'{"object": "event"}'])
def test_verify_webhook_rejects_bodies_that_are_not_events(body):
    with pytest.raises(stripe_api.InvalidWebhook):
        stripe_api.verify_webhook(body, sign_payload(body))


def test_a_stripe_that_accepts_but_never_answers_is_unavailable_within_the_timeout(
    settings, monkeypatch
):
    """A hang (a black-holed route, a stuck proxy) fails like an outage, in seconds: not after
    stripe-python's 80 seconds a try, which outlast a web request and django-q2's task timeout
    (found by the process-level fault tests: the worker was killed, nothing recorded)."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel accepts connections; nobody ever answers
        port = listener.getsockname()[1]
        settings.WAGTAIL_PAID_DELIVERY = {
            **settings.WAGTAIL_PAID_DELIVERY,
            "STRIPE_API_BASE": f"http://127.0.0.1:{port}",
        }
        monkeypatch.setattr(stripe_api, "REQUEST_TIMEOUT", (1.0, 0.5))
        stripe_api.reset_clients()
        started = time.monotonic()
        with pytest.raises(stripe_api.StripeUnavailable):
            stripe_api.retrieve_checkout_session("cs_test_hangs")
        assert time.monotonic() - started < 10
    stripe_api.reset_clients()


def test_the_client_waits_for_stripe_at_most_the_request_timeout(settings):
    stripe_api.reset_clients()
    requestor = stripe_api.get_client()._requestor
    http_client = requestor._client
    assert isinstance(http_client, stripe.RequestsClient)
    assert http_client._timeout == stripe_api.REQUEST_TIMEOUT
    # Three tries (the first and MAX_NETWORK_RETRIES) stay under the README's task timeout.
    connect, read = stripe_api.REQUEST_TIMEOUT
    assert (1 + stripe_api.MAX_NETWORK_RETRIES) * max(connect, read) < 60
