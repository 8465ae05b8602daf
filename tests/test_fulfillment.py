"""fulfill_checkout, revoke_purchase and restore_purchase: the purchase state machine."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from tests.concurrency import run_at_once
from tests.factories import DownloadLinkFactory, ProductPageFactory, PurchaseFactory
from tests.stripe_fake import start_checkout
from wagtail_paid_delivery import signals, stripe_api
from wagtail_paid_delivery.fulfillment import fulfill_checkout, restore_purchase, revoke_purchase
from wagtail_paid_delivery.models import Purchase

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="row locks are proven on PostgreSQL; SQLite ignores select_for_update and "
    "serialises writers with 'database is locked' errors instead",
)


class Receiver:
    """Counts a signal's calls (thread-safe) while connected."""

    def __init__(self, signal):
        self.signal = signal
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, sender, **kwargs):
        with self._lock:
            self.calls.append(kwargs)

    def __enter__(self):
        self.signal.connect(self, weak=False)
        return self

    def __exit__(self, *exc):
        self.signal.disconnect(self)


@pytest.fixture
def purchase(home):
    return PurchaseFactory(product=ProductPageFactory(parent=home, price_amount=1250))


def test_fulfill_checkout_marks_purchase_paid_once_and_sends_signal(
    purchase, fake_stripe, django_capture_on_commit_callbacks
):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")

    with Receiver(signals.purchase_paid) as paid, django_capture_on_commit_callbacks(execute=True):
        result = fulfill_checkout(session_id)
    assert result.outcome == "fulfilled" and result.is_paid
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert purchase.paid_at is not None
    assert purchase.email == "ada@example.com"
    assert purchase.stripe_payment_intent_id.startswith("pi_")
    assert purchase.livemode is False
    assert [c["purchase"].pk for c in paid.calls] == [purchase.pk]
    paid_at = purchase.paid_at

    with Receiver(signals.purchase_paid) as paid, django_capture_on_commit_callbacks(execute=True):
        again = fulfill_checkout(session_id)
    assert again.outcome == "already_paid"
    assert paid.calls == []
    purchase.refresh_from_db()
    assert purchase.paid_at == paid_at


def test_fulfill_checkout_asks_stripe_with_expansions(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    fulfill_checkout(session_id)
    (call,) = fake_stripe.calls("GET", "/v1/checkout/sessions/")
    assert sorted(call.params["expand"]) == ["line_items", "payment_intent.latest_charge"]
    # The charge comes with the session: a paid session is one call to Stripe, not two.
    assert fake_stripe.calls("GET", "/v1/payment_intents/") == []


def test_fulfill_checkout_leaves_unpaid_session_pending(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, payment_status="unpaid")
    result = fulfill_checkout(session_id)
    assert result.outcome == "not_paid"
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING
    assert purchase.paid_at is None


def test_fulfill_checkout_accepts_lower_total_from_promotion_code(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, amount_discount=250)
    assert fulfill_checkout(session_id).outcome == "fulfilled"


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ({"unit_amount": 1}, "unit amount 1 != 1250"),
        ({"currency": "eur"}, "currency eur != usd"),
        ({"quantity": 3}, "quantity 3 != 1"),
        ({"add_item": True}, "expected 1 line item, got 2"),
    ],
)
def test_fulfill_checkout_refuses_tampered_line_items(purchase, fake_stripe, tamper, expected):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.tamper_line_item(session_id, **tamper)
    fake_stripe.pay(session_id)
    with Receiver(signals.purchase_paid) as paid:
        result = fulfill_checkout(session_id)
    assert result.outcome == "refused"
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.FAILED
    assert purchase.paid_at is None
    assert expected in purchase.status_reason
    assert paid.calls == []
    # Asking again does not turn a refusal into a delivery.
    assert fulfill_checkout(session_id).outcome == "refused"


def test_fulfill_checkout_checks_the_products_stripe_price(home, fake_stripe):
    price = fake_stripe.add_price(1250, "usd", price_id="price_GuideUSD")
    page = ProductPageFactory(parent=home, price_amount=1250, stripe_price_id=price["id"])
    ok = PurchaseFactory(product=page)
    session_id = start_checkout(fake_stripe, ok, price_id=price["id"])
    fake_stripe.pay(session_id)
    assert fulfill_checkout(session_id).outcome == "fulfilled"

    tampered = PurchaseFactory(product=page)
    session_id = start_checkout(fake_stripe, tampered, price_id=price["id"])
    fake_stripe.tamper_line_item(session_id, price_id="price_Other")
    fake_stripe.pay(session_id)
    result = fulfill_checkout(session_id)
    assert result.outcome == "refused"
    assert "price price_Other != price_GuideUSD" in result.reason


def test_fulfill_checkout_ignores_other_installations(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase, installation="another-site")
    fake_stripe.pay(session_id)
    result = fulfill_checkout(session_id)
    assert result.outcome == "not_ours" and result.purchase is None
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


def test_fulfill_checkout_ignores_inconsistent_purchase_ids(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.sessions[session_id]["client_reference_id"] = str(PurchaseFactory().public_id)
    fake_stripe.pay(session_id)
    assert fulfill_checkout(session_id).outcome == "not_ours"
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


def test_fulfill_checkout_finds_purchase_by_public_id_before_session_id_is_saved(
    purchase, fake_stripe
):
    session_id = start_checkout(fake_stripe, purchase)
    Purchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id=None)
    fake_stripe.pay(session_id)
    assert fulfill_checkout(session_id).outcome == "fulfilled"
    purchase.refresh_from_db()
    assert purchase.stripe_checkout_session_id == session_id


@pytest.mark.parametrize(
    "status", [Purchase.Status.REVOKED, Purchase.Status.REFUNDED, Purchase.Status.DISPUTED]
)
def test_fulfill_checkout_never_resurrects_a_purchase(purchase, fake_stripe, status):
    session_id = start_checkout(fake_stripe, purchase)
    Purchase.objects.filter(pk=purchase.pk).update(status=status)
    fake_stripe.pay(session_id)
    assert fulfill_checkout(session_id).outcome == "refused"
    purchase.refresh_from_db()
    assert purchase.status == status
    assert purchase.paid_at is None


def test_fulfill_checkout_raises_stripe_unavailable_and_changes_nothing(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    fake_stripe.set_down(True)
    with pytest.raises(stripe_api.StripeUnavailable):
        fulfill_checkout(session_id)
    # stripe-python retried twice (max_network_retries=2) before giving up.
    assert len(fake_stripe.calls("GET")) == 3
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


def test_revoke_purchase_is_final_idempotent_and_revokes_links(
    db, django_capture_on_commit_callbacks
):
    link = DownloadLinkFactory()
    purchase = link.purchase
    with (
        Receiver(signals.purchase_revoked) as revoked,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert revoke_purchase(purchase, reason="chargeback risk") is True
        assert revoke_purchase(purchase, reason="again") is False
    assert purchase.status == Purchase.Status.REVOKED
    assert [c["reason"] for c in revoked.calls] == ["chargeback risk"]
    purchase.refresh_from_db()
    assert purchase.revoked_at is not None and purchase.status_reason == "chargeback risk"
    link.refresh_from_db()
    assert link.revoked_at is not None
    # Revoked is final: neither a restore nor a refund changes it.
    assert restore_purchase(purchase) is False
    assert revoke_purchase(purchase, reason="x", status=Purchase.Status.REFUNDED) is False
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.REVOKED


def test_dispute_suspends_and_restore_gives_access_back(db, django_capture_on_commit_callbacks):
    link = DownloadLinkFactory()
    purchase = link.purchase
    with (
        Receiver(signals.purchase_revoked) as revoked,
        Receiver(signals.purchase_restored) as restored,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert revoke_purchase(purchase, reason="dispute", status=Purchase.Status.DISPUTED)
        assert not revoke_purchase(purchase, reason="dispute", status=Purchase.Status.DISPUTED)
        assert restore_purchase(purchase) is True
        assert restore_purchase(purchase) is False
    assert len(revoked.calls) == 1 and len(restored.calls) == 1
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    link.refresh_from_db()
    assert link.revoked_at is None  # a suspension needs no new links when it ends


def test_dispute_on_unpaid_purchase_changes_nothing(purchase):
    assert revoke_purchase(purchase, reason="d", status=Purchase.Status.DISPUTED) is False
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_fulfill_checkout_fulfils_exactly_once(home, fake_stripe):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    with Receiver(signals.purchase_paid) as paid:
        results = run_at_once([lambda: fulfill_checkout(session_id)] * 8)
    outcomes = [result.outcome for result in results]
    assert sorted(outcomes) == ["already_paid"] * 7 + ["fulfilled"]
    assert len(paid.calls) == 1
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    paid_at = purchase.paid_at
    assert fulfill_checkout(session_id).outcome == "already_paid"
    purchase.refresh_from_db()
    assert purchase.paid_at == paid_at
