"""The sandbox's Stripe emulator, driven by the package's real stripe-python calls.

stripe-python's HTTP layer is routed into Django's test client, so the package talks to the
emulator exactly as the sandbox does over HTTP, all inside the test's transaction. The webhook the
emulator sends on Pay is captured and posted to the package's webhook view.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe
from django.apps import apps
from django.test import Client
from django.urls import reverse

from tests.factories import ProductPageFactory
from wagtail_paid_delivery import stripe_api
from wagtail_paid_delivery.models import Purchase

pytestmark = pytest.mark.skipif(
    not apps.is_installed("sandbox.stripe_emulator"),
    reason="needs the sandbox's Stripe emulator: pytest --ds=tests.settings_emulator",
)

API_BASE = "http://testserver/stripe-emulator"


class DjangoClientHTTP(stripe.HTTPClient):
    """A ``stripe.HTTPClient`` that sends stripe-python's requests through Django's test client."""

    name = "django-test-client"

    def __init__(self) -> None:
        super().__init__()
        self.client = Client()

    def _sleep_time_seconds(self, num_retries: int, response: Any = None) -> float:
        return 0.0

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = dict(headers or {})
        content_type = headers.pop("Content-Type", "application/x-www-form-urlencoded")
        response = self.client.generic(
            method.upper(), path, post_data or b"", content_type=content_type, headers=headers
        )
        return response.content.decode(), response.status_code, dict(response.headers)

    def request_stream(self, *args, **kwargs):
        raise NotImplementedError

    def close(self):
        pass


@pytest.fixture
def emulator(db, settings, monkeypatch):
    """The package configured against the emulator; webhooks captured instead of sent."""
    from sandbox.stripe_emulator import webhooks

    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STRIPE_API_BASE": API_BASE,
    }
    monkeypatch.setattr(stripe_api, "_http_client_override", DjangoClientHTTP())
    stripe_api.reset_clients()
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(webhooks, "USE_THREAD", False)
    monkeypatch.setattr(
        webhooks,
        "post",
        lambda url, payload, signature: (
            sent.append({"url": url, "payload": payload, "signature": signature}) or 200
        ),
    )
    yield sent
    stripe_api.reset_clients()


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


def params(**overrides) -> dict[str, Any]:
    metadata = {"wpd_installation": "tests", "wpd_purchase": "p1", "wpd_product": "1"}
    return {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 1250,
                    "product_data": {"name": "Field guide"},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": "p1",
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "success_url": "http://testserver/shop/thanks/?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://testserver/field-guide/",
        **overrides,
    }


def test_emulator_creates_sessions_idempotently(emulator):
    first = stripe_api.create_checkout_session(params(), idempotency_key="k1")
    again = stripe_api.create_checkout_session(params(), idempotency_key="k1")
    other = stripe_api.create_checkout_session(params(), idempotency_key="k2")

    assert first.id == again.id != other.id
    assert first.id.startswith("cs_test_")
    assert first.url == f"{API_BASE}/pay/{first.id}/"
    assert (first.status, first.payment_status, first.amount_total) == ("open", "unpaid", 1250)
    assert first.metadata["wpd_purchase"] == "p1"

    with pytest.raises(stripe_api.StripeRefused):
        stripe_api.create_checkout_session(
            params(customer_email="x@example.com"), idempotency_key="k1"
        )


def test_emulator_retrieves_sessions_with_expansions_and_prices(emulator):
    from sandbox.stripe_emulator.models import EmulatedPrice

    price = EmulatedPrice.objects.create(unit_amount=900, currency="eur", product_name="Atlas")
    created = stripe_api.create_checkout_session(
        params(line_items=[{"price": price.id, "quantity": 1}]), idempotency_key="k"
    )

    session = stripe_api.retrieve_checkout_session(created.id)
    [item] = session.line_items.data
    assert (item.price.id, item.price.unit_amount, item.currency) == (price.id, 900, "eur")
    assert item.description == "Atlas"
    assert session.payment_intent is None

    found = stripe_api.retrieve_price(price.id)
    assert (found.unit_amount, found.currency, found.type, found.active) == (
        900,
        "eur",
        "one_time",
        True,
    )
    with pytest.raises(stripe_api.StripePermanent) as excinfo:
        stripe_api.retrieve_price("price_missing")
    assert excinfo.value.code == "resource_missing"
    with pytest.raises(stripe_api.StripePermanent):
        stripe_api.retrieve_checkout_session("cs_test_missing")


def test_emulator_refuses_a_wrong_or_missing_api_key(client, emulator):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer sk_test_wrong"}):
        response = client.get("/stripe-emulator/v1/prices/price_x", **headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_emulator_answers_each_api_call_after_the_configured_delay(client, emulator, settings):
    """STRIPE_EMULATOR_DELAY_MS stands for Stripe's own latency (benchmarks/burst.py)."""
    settings.STRIPE_EMULATOR_DELAY_MS = 150
    started = time.monotonic()
    response = client.get("/stripe-emulator/v1/prices/price_x")
    assert response.status_code == 401
    assert time.monotonic() - started >= 0.15


def test_buy_pay_webhook_success_through_the_emulator(
    client, product, emulator, django_capture_on_commit_callbacks
):
    # The Buy button: 303 to the emulator's hosted page.
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    assert response.status_code == 303
    hosted = response["Location"]
    purchase = Purchase.objects.get()
    assert hosted == f"{API_BASE}/pay/{purchase.stripe_checkout_session_id}/"

    page = client.get(hosted)
    html = page.content.decode()
    assert page.status_code == 200
    assert "Stripe emulator — no real payment" in html
    assert "Field guide" in html and "Pay $12.50" in html

    # Pay: marked paid, 303 to the success URL with the session id, a signed webhook sent.
    with django_capture_on_commit_callbacks(execute=True):
        paid = client.post(hosted, {"action": "pay", "email": "ada@example.com"})
    assert paid.status_code == 303
    assert paid["Location"] == (
        f"http://testserver/shop/thanks/?session_id={purchase.stripe_checkout_session_id}"
    )
    delivery, also = emulator
    assert stripe_api.verify_webhook(also["payload"], also["signature"])["type"] == (
        "payment_intent.succeeded"
    )
    assert delivery["url"] == "http://testserver/shop/stripe/webhook/"
    event = stripe_api.verify_webhook(delivery["payload"], delivery["signature"])
    assert event["type"] == "checkout.session.completed"
    session = event["data"]["object"]
    assert session["id"] == purchase.stripe_checkout_session_id
    assert session["payment_status"] == "paid"
    assert session["customer_details"]["email"] == "ada@example.com"
    assert session["metadata"]["wpd_purchase"] == str(purchase.public_id)

    # The package's webhook accepts it and fulfills.
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            "/shop/stripe/webhook/",
            delivery["payload"],
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=delivery["signature"],
        )
    assert answer.status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert purchase.email == "ada@example.com"
    assert purchase.stripe_payment_intent_id.startswith("pi_")

    success = client.get(paid["Location"])
    assert "Thank you for your purchase" in success.content.decode()

    # The session is no longer payable.
    again = client.get(hosted).content.decode()
    assert "This checkout session is complete" in again


def test_cancel_returns_to_the_product_and_pays_nothing(client, product, emulator):
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    cancelled = client.post(response["Location"], {"action": "cancel"})

    assert cancelled.status_code == 303
    assert cancelled["Location"] == product.get_full_url()
    assert emulator == []
    assert Purchase.objects.get().status == Purchase.Status.PENDING


def test_pay_needs_an_email(client, emulator):
    session = stripe_api.create_checkout_session(params(), idempotency_key="k")
    response = client.post(urlsplit(session.url).path, {"action": "pay", "email": "nope"})
    assert response.status_code == 400
    assert "Enter the email address" in response.content.decode()
    assert emulator == []


def test_webhook_signature_is_stripes_scheme():
    from sandbox.stripe_emulator.webhooks import sign

    header = sign(b'{"id": "evt_1"}', "whsec_tests", timestamp=1700000000)
    stripe.WebhookSignature.verify_header(b'{"id": "evt_1"}', header, "whsec_tests", tolerance=None)
    assert header.startswith("t=1700000000,v1=")


# Events after the payment: the dashboard, the control endpoint and `manage.py trigger` --------


def deliver_all(client, sent, django_capture_on_commit_callbacks) -> list[str]:
    """Post every captured webhook to the shop (as the emulator's thread would); their types."""
    types = []
    while sent:
        delivery = sent.pop(0)
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                "/shop/stripe/webhook/",
                delivery["payload"],
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=delivery["signature"],
            )
        assert response.status_code == 200, response.content
        types.append(stripe_api.verify_webhook(delivery["payload"], delivery["signature"])["type"])
    return types


@pytest.fixture
def bought(client, product, emulator):
    """A purchase at the emulator's hosted page, not yet paid."""
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    return Purchase.objects.get(), urlsplit(response["Location"]).path


def trigger(*args):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("trigger", *args, stdout=out)
    return out.getvalue()


def state(purchase) -> str:
    purchase.refresh_from_db()
    return purchase.status


def test_pay_later_then_succeed(client, bought, emulator, django_capture_on_commit_callbacks):
    purchase, hosted = bought
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(hosted, {"action": "pay_later", "email": "ada@example.com"})
    assert response.status_code == 303
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "checkout.session.completed"
    ]
    assert state(purchase) == Purchase.Status.PENDING
    success = client.get(response["Location"]).content.decode()
    assert "processing" in success.lower()

    with django_capture_on_commit_callbacks(execute=True):
        out = trigger("succeed", str(purchase.public_id))
    assert "sends checkout.session.async_payment_succeeded" in out
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "checkout.session.async_payment_succeeded",
        "payment_intent.succeeded",
    ]
    assert state(purchase) == Purchase.Status.PAID


def test_pay_later_then_fail(client, bought, emulator, django_capture_on_commit_callbacks):
    purchase, hosted = bought
    with django_capture_on_commit_callbacks(execute=True):
        client.post(hosted, {"action": "pay_later", "email": "ada@example.com"})
        trigger("fail", purchase.stripe_checkout_session_id)
    types = deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert "checkout.session.async_payment_failed" in types
    assert state(purchase) == Purchase.Status.FAILED
    assert "insufficient funds" in purchase.status_reason


def test_declined_card_keeps_the_session_open(
    client, bought, emulator, django_capture_on_commit_callbacks
):
    purchase, hosted = bought
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(hosted, {"action": "decline", "email": "ada@example.com"})
    assert response.status_code == 303 and response["Location"] == hosted
    page = client.get(hosted).content.decode()
    assert "Your card was declined." in page and "Pay $12.50" in page
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "payment_intent.payment_failed"
    ]
    assert state(purchase) == Purchase.Status.PENDING
    # Trying again with a good card works.
    with django_capture_on_commit_callbacks(execute=True):
        client.post(hosted, {"action": "pay", "email": "ada@example.com"})
    deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert state(purchase) == Purchase.Status.PAID


def test_expire_from_the_dashboard(client, bought, emulator, django_capture_on_commit_callbacks):
    purchase, _ = bought
    dashboard = reverse("stripe_emulator:dashboard")
    assert "Expire" in client.get(dashboard).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            dashboard, {"session": purchase.stripe_checkout_session_id, "action": "expire"}
        )
    assert response.status_code == 303
    assert "checkout.session.expired" in client.get(response["Location"]).content.decode()
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "checkout.session.expired"
    ]
    assert state(purchase) == Purchase.Status.EXPIRED


@pytest.fixture
def paid(client, bought, emulator, django_capture_on_commit_callbacks):
    purchase, hosted = bought
    with django_capture_on_commit_callbacks(execute=True):
        client.post(hosted, {"action": "pay", "email": "ada@example.com"})
    deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert state(purchase) == Purchase.Status.PAID
    return purchase


def test_partial_then_full_refund_from_the_dashboard(
    client, paid, emulator, django_capture_on_commit_callbacks
):
    dashboard = reverse("stripe_emulator:dashboard")
    session_id = paid.stripe_checkout_session_id
    with django_capture_on_commit_callbacks(execute=True):
        client.post(dashboard, {"session": session_id, "action": "refund", "amount": "2.50"})
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "refund.created",
        "charge.refunded",
    ]
    assert state(paid) == Purchase.Status.PAID
    assert paid.amount_refunded == 250
    assert "partially refunded" in client.get(dashboard).content.decode()

    # What the package reads back is consistent with what the event said.
    intent = stripe_api.retrieve_payment_intent(paid.stripe_payment_intent_id)
    assert intent.latest_charge.amount_refunded == 250 and not intent.latest_charge.refunded
    assert len(intent.latest_charge.refunds.data) == 1

    with django_capture_on_commit_callbacks(execute=True):
        client.post(dashboard, {"session": session_id, "action": "refund"})
    deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert state(paid) == Purchase.Status.REFUNDED
    assert paid.amount_refunded == 1250
    # Nothing left to refund: the stand-in refuses, as Stripe would.
    from sandbox.stripe_emulator.control import emulator_control

    with pytest.raises(stripe.InvalidRequestError, match="0 left to refund"):
        emulator_control(session_id, "refund", {})


def test_the_shop_desk_refunds_through_the_emulator_once(
    client, admin_client, paid, emulator, django_capture_on_commit_callbacks
):
    """The sandbox shop owner refunds from the desk: the emulator's Refunds API makes the refund
    (once per confirmation), sends refund.created and charge.refunded, and the webhooks that
    follow find the purchase already in line."""
    refund_url = reverse("wagtail_paid_delivery_purchases:refund", args=[paid.pk])
    form = {"amount": "5.00", "reason": "requested_by_customer", "note": "", "key": "e" * 32}
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client.post(refund_url, form).status_code == 302
        assert admin_client.post(refund_url, form).status_code == 302  # sent twice
    assert (state(paid), paid.amount_refunded) == (Purchase.Status.PAID, 500)
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "refund.created",
        "charge.refunded",
    ]
    assert (state(paid), paid.amount_refunded) == (Purchase.Status.PAID, 500)
    intent = stripe_api.retrieve_payment_intent(paid.stripe_payment_intent_id)
    (made,) = intent.latest_charge.refunds.data
    assert (made.amount, made.reason, made.metadata["wpd_purchase"]) == (
        500,
        "requested_by_customer",
        str(paid.public_id),
    )

    # The rest, in full: access ends; the same key with another amount is Stripe's error.
    with django_capture_on_commit_callbacks(execute=True):
        again = stripe_api.create_refund(
            paid.stripe_payment_intent_id,
            amount=750,
            reason="duplicate",
            idempotency_key="k-rest",
        )
    replay = stripe_api.create_refund(
        paid.stripe_payment_intent_id,
        amount=750,
        reason="duplicate",
        idempotency_key="k-rest",
    )
    assert again.id == replay.id and again.status == "succeeded"
    with pytest.raises(stripe_api.StripeRefused, match="same parameters"):
        stripe_api.create_refund(
            paid.stripe_payment_intent_id, amount=1, reason="duplicate", idempotency_key="k-rest"
        )
    with pytest.raises(stripe_api.StripeRefused) as refused:
        stripe_api.create_refund(
            paid.stripe_payment_intent_id, amount=1, reason="duplicate", idempotency_key="k-more"
        )
    assert refused.value.code == "charge_already_refunded"
    deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert (state(paid), paid.amount_refunded) == (Purchase.Status.REFUNDED, 1250)


def test_dispute_won_then_a_second_purchase_lost(
    client, paid, emulator, django_capture_on_commit_callbacks
):
    session_id = paid.stripe_checkout_session_id
    with django_capture_on_commit_callbacks(execute=True):
        trigger("dispute", session_id)
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "charge.dispute.created"
    ]
    assert state(paid) == Purchase.Status.DISPUTED
    [dispute] = stripe_api.list_disputes_for_payment_intent(paid.stripe_payment_intent_id)
    assert dispute.status == "needs_response"

    with django_capture_on_commit_callbacks(execute=True):
        trigger("win", session_id)
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks) == [
        "charge.dispute.closed"
    ]
    assert state(paid) == Purchase.Status.PAID

    with pytest.raises(Exception, match="no open dispute"):
        trigger("lose", session_id)


def test_dispute_lost_ends_access(client, paid, emulator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        trigger("dispute", str(paid.public_id))
        trigger("lose", str(paid.public_id))
    deliver_all(client, emulator, django_capture_on_commit_callbacks)
    assert state(paid) == Purchase.Status.REFUNDED
    assert "lost" in paid.status_reason


def test_list_sessions_by_payment_intent_and_charges(paid, emulator):
    [session] = stripe_api.list_checkout_sessions_for_payment_intent(paid.stripe_payment_intent_id)
    assert session.id == paid.stripe_checkout_session_id
    intent = stripe_api.retrieve_payment_intent(paid.stripe_payment_intent_id)
    assert intent.status == "succeeded"
    assert intent.latest_charge.payment_intent == intent.id
    assert intent.latest_charge.metadata["wpd_purchase"] == str(paid.public_id)


def test_control_endpoint_needs_the_secret_key(client, paid):
    url = f"/stripe-emulator/_emulator/sessions/{paid.stripe_checkout_session_id}/refund"
    assert client.post(url).status_code == 401
    assert state(paid) == Purchase.Status.PAID


# Events kept and listed: reconciliation heals what held-back webhooks missed --------------------


def test_emulator_lists_the_events_it_made_as_stripe_does(paid, emulator):
    from sandbox.stripe_emulator.models import EmulatedEvent

    trigger("refund", str(paid.public_id), "--amount", "250", "--hold-webhook")
    trigger("refund", str(paid.public_id), "--hold-webhook")
    assert emulator == []  # held back: nothing sent

    page = stripe_api.list_events(types=["charge.refunded"], created_gt=0)
    assert not page.has_more
    newest, oldest = page.events
    assert (newest["type"], newest["object"]) == ("charge.refunded", "event")
    assert newest["data"]["object"]["amount_refunded"] == 1250
    assert oldest["data"]["object"]["amount_refunded"] == 250
    assert newest["data"]["object"]["payment_intent"] == paid.stripe_payment_intent_id
    assert set(newest) >= {
        "id",
        "api_version",
        "created",
        "livemode",
        "pending_webhooks",
        "request",
    }

    # Pagination and filters, as Stripe's list has them.
    first = stripe_api.list_events(types=["charge.refunded"], created_gt=0, limit=1)
    assert first.has_more and first.events[0]["id"] == newest["id"]
    second = stripe_api.list_events(
        types=["charge.refunded"], created_gt=0, limit=1, starting_after=newest["id"]
    )
    assert not second.has_more and second.events[0]["id"] == oldest["id"]
    later = stripe_api.list_events(types=["charge.refunded"], created_gt=newest["created"])
    assert later.events == []
    everything = stripe_api.list_events(
        types=["checkout.session.completed", "charge.refunded"], created_gt=0
    )
    assert [e["type"] for e in everything.events] == [
        "charge.refunded",
        "charge.refunded",
        "checkout.session.completed",
    ]
    # Events that were delivered are listed with the very body the webhook carried.
    delivered = EmulatedEvent.objects.get(type="checkout.session.completed")
    assert delivered.delivery == "delivered (200)"
    assert everything.events[-1] == delivered.payload
    assert EmulatedEvent.objects.get(pk=newest["id"]).delivery == "held back (webhooks off)"


def test_refund_with_webhooks_held_back_then_manage_py_reconcile_kills_the_link(
    client, paid, emulator, monkeypatch, django_capture_on_commit_callbacks
):
    """The sandbox walk-through: hold webhooks back on the dashboard, refund, run
    ``manage.py reconcile``: the link dies."""
    from io import StringIO

    from django.core import mail
    from django.core.management import call_command

    from wagtail_paid_delivery import reconciliation

    monkeypatch.setattr(reconciliation, "EVENT_GRACE", timedelta(0))
    link = mail.outbox[-1].body.split("Download your files:\n")[1].split("\n")[0]
    link = link.removeprefix("http://testserver")
    assert client.get(link).status_code == 200

    dashboard = reverse("stripe_emulator:dashboard")
    response = client.post(dashboard, {"webhooks": "hold"})
    assert "Webhooks held back" in client.get(response["Location"]).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(dashboard, {"session": paid.stripe_checkout_session_id, "action": "refund"})
    assert emulator == []
    page = client.get(dashboard).content.decode()
    assert "held back (webhooks off)" in page and "charge.refunded" in page
    assert state(paid) == Purchase.Status.PAID
    assert client.get(link).status_code == 200

    out = StringIO()
    call_command("reconcile", "--sync", stdout=out)
    assert "1 new and queued" in out.getvalue()
    assert state(paid) == Purchase.Status.REFUNDED
    assert client.get(link).status_code == 410

    response = client.post(dashboard, {"webhooks": "send"})
    assert "Webhooks are sent again" in client.get(response["Location"]).content.decode()


def test_promotion_code_and_tax_reach_the_buyers_receipt(
    client, product, emulator, settings, django_capture_on_commit_callbacks
):
    """The emulator applies SANDBOX20 and its 10 % tax and returns them as Stripe does (the
    session's totals, the charge's receipt_url), so the sandbox shows a full receipt."""
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "CHECKOUT_OPTIONS": {"allow_promotion_codes": True, "automatic_tax": True},
    }
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    hosted = urlsplit(response["Location"]).path
    page = client.get(hosted).content.decode()
    assert 'name="promotion_code"' in page and "added when you pay" in page
    wrong = client.post(hosted, {"action": "pay", "email": "a@example.com", "promotion_code": "X"})
    assert wrong.status_code == 400 and "promotion code" in wrong.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        paid = client.post(
            hosted, {"action": "pay", "email": "ada@example.com", "promotion_code": "sandbox20"}
        )
    delivery = emulator[0]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/shop/stripe/webhook/",
            delivery["payload"],
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=delivery["signature"],
        )
    purchase = Purchase.objects.get()
    assert (purchase.amount_subtotal, purchase.amount_discount) == (1250, 250)
    assert (purchase.amount_tax, purchase.amount_total) == (100, 1100)
    assert purchase.receipt_url.startswith("http://testserver/stripe-emulator/receipts/ch_")

    html = client.get(paid["Location"]).content.decode()
    receipt = " ".join(re.sub(r"<[^>]+>", " ", html.split('class="pd-receipt"')[1]).split())
    assert "Subtotal $12.50 Discount \u2212$2.50 Tax $1.00 Total paid $11.00" in receipt
    stripe_receipt = client.get(urlsplit(purchase.receipt_url).path).content.decode()
    assert "SANDBOX20" in stripe_receipt and "$11.00" in stripe_receipt


# Pay what you want: a Price with custom_unit_amount, the amount typed on the hosted page -------


@pytest.fixture
def pwyw_hosted(client, home, emulator):
    page = ProductPageFactory(
        parent=home, title="Songbook", price_amount=500, currency="USD", pay_what_you_want=True
    )
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[page.pk]), HTTP_ORIGIN="http://testserver"
    )
    assert response.status_code == 303
    return page, Purchase.objects.get(), urlsplit(response["Location"]).path


def test_emulator_makes_the_custom_price_and_the_page_asks_for_the_amount(client, pwyw_hosted):
    page, purchase, hosted = pwyw_hosted
    page.refresh_from_db()
    price = stripe_api.retrieve_price(page.custom_price_id)
    assert price.unit_amount is None
    assert price.custom_unit_amount.to_dict() == {"maximum": None, "minimum": 500, "preset": 500}
    assert price.metadata["wpd_product"] == str(page.pk)

    html = client.get(hosted).content.decode()
    assert "Choose your price" in html and "at least $5.00" in html
    assert 'name="amount" value="5.00"' in html
    # The button does not name the suggested amount: the buyer may type another.
    assert "Pay the price you chose" in html and "Pay $5.00" not in html
    assert "Suggested price" in html


def test_emulator_refuses_an_amount_below_the_minimum(client, pwyw_hosted, emulator):
    _, purchase, hosted = pwyw_hosted
    for typed in ("4.99", "five", "5.001", "-7", "NaN"):
        response = client.post(
            hosted, {"action": "pay", "email": "ada@example.com", "amount": typed}
        )
        assert response.status_code == 400, typed
        assert "enter an amount no lower than the minimum shown" in response.content.decode()
    assert emulator == []
    assert state(purchase) == Purchase.Status.PENDING


def test_pay_what_you_want_through_the_emulator(
    client, pwyw_hosted, emulator, django_capture_on_commit_callbacks
):
    _, purchase, hosted = pwyw_hosted
    with django_capture_on_commit_callbacks(execute=True):
        paid = client.post(hosted, {"action": "pay", "email": "ada@example.com", "amount": "12"})
    assert paid.status_code == 303
    assert deliver_all(client, emulator, django_capture_on_commit_callbacks)[0] == (
        "checkout.session.completed"
    )
    assert state(purchase) == Purchase.Status.PAID
    assert purchase.amount == purchase.amount_total == 1200
    assert "$12.00" in client.get(paid["Location"]).content.decode()
