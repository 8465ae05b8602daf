"""Reconciliation's pending pass: a pending purchase whose webhook never arrived heals itself
from Stripe's own state, in fair batches. (The events pass, which heals refunds and disputes of
paid purchases, is tested in test_reconcile_events.py.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.stripe_fake import start_checkout
from tests.test_fulfillment import Receiver
from wagtail_paid_delivery import reconciliation, signals
from wagtail_paid_delivery.models import Purchase, StripeEvent


def reconcile() -> str:
    """The pending pass on its own (tasks.reconcile runs it after the events pass)."""
    return reconciliation.pending_summary(reconciliation.check_pending())


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, price_amount=1250)


def pending(product, fake_stripe, *, age=timedelta(minutes=30)):
    purchase = PurchaseFactory(product=product)
    session_id = start_checkout(fake_stripe, purchase)
    Purchase.objects.filter(pk=purchase.pk).update(created_at=timezone.now() - age)
    return purchase, session_id


def status(purchase) -> str:
    purchase.refresh_from_db()
    return purchase.status


def test_reconcile_fulfils_a_paid_session_that_never_sent_a_webhook(
    product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase, session_id = pending(product, fake_stripe)
    fake_stripe.pay(session_id, email="ada@example.com")
    with (
        Receiver(signals.purchase_paid) as delivered,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert reconcile() == "fulfilled 1"
    assert status(purchase) == Purchase.Status.PAID
    assert purchase.email == "ada@example.com"
    assert len(delivered.calls) == 1
    assert not StripeEvent.objects.exists()
    # Paid purchases are no longer asked about.
    fake_stripe.requests.clear()
    assert reconcile() == "nothing pending"
    assert fake_stripe.requests == []


def test_reconcile_marks_expired_and_failed_and_leaves_open_ones(product, fake_stripe):
    expired, expired_id = pending(product, fake_stripe, age=timedelta(hours=24, minutes=5))
    fake_stripe.expire(expired_id)
    failed, failed_id = pending(product, fake_stripe)
    fake_stripe.pay(failed_id, payment_status="unpaid")
    fake_stripe.fail_async(failed_id)
    clearing, clearing_id = pending(product, fake_stripe)
    fake_stripe.pay(clearing_id, payment_status="unpaid")
    still_open, _ = pending(product, fake_stripe)

    assert reconcile() == "expired 1, failed 1, not_paid 2"
    assert status(expired) == Purchase.Status.EXPIRED
    assert status(failed) == Purchase.Status.FAILED
    assert status(clearing) == Purchase.Status.PENDING
    assert status(still_open) == Purchase.Status.PENDING


def test_reconcile_skips_too_old_too_young_and_foreign_purchases(product, fake_stripe):
    old, old_id = pending(product, fake_stripe, age=timedelta(hours=30))
    young, young_id = pending(product, fake_stripe, age=timedelta(seconds=10))
    for session_id in (old_id, young_id):
        fake_stripe.pay(session_id)
    granted = PurchaseFactory(product=product, source=Purchase.Source.GRANT)
    assert reconcile() == "nothing pending"
    assert fake_stripe.requests == []
    assert {status(old), status(young), status(granted)} == {Purchase.Status.PENDING}


def test_reconcile_is_bounded_and_takes_turns(product, fake_stripe, monkeypatch):
    monkeypatch.setattr(reconciliation, "RECONCILE_BATCH", 2)
    purchases = [pending(product, fake_stripe)[0] for _ in range(3)]
    assert reconcile() == "not_paid 2"
    assert len(fake_stripe.calls("GET", "/v1/checkout/sessions/")) == 2
    # The one left out is checked first next time.
    checked_first_time = {r.path.rsplit("/", 1)[1] for r in fake_stripe.calls("GET")}
    fake_stripe.requests.clear()
    reconcile()
    first = fake_stripe.calls("GET", "/v1/checkout/sessions/")[0].path
    unchecked = {p.stripe_checkout_session_id for p in purchases} - checked_first_time
    assert first.rsplit("/", 1)[1] in unchecked


def test_reconcile_stops_when_stripe_is_down(product, fake_stripe):
    for _ in range(3):
        pending(product, fake_stripe)
    fake_stripe.set_down(True)
    assert reconcile() == "stripe unavailable 1"
    # One session tried (with stripe-python's own retries), then the run stopped.
    assert len(fake_stripe.calls("GET")) == 3


# Fair batches ----------------------------------------------------------------------------------


def test_a_flood_of_old_pending_purchases_does_not_starve_a_new_one(product, fake_stripe):
    """120 abandoned checkouts from the last day, more than two batches, never checked yet; a
    buyer who paid five minutes ago (and whose webhook was lost) is still found in the first
    run, and every abandoned one is asked about once before any is asked twice."""
    abandoned = [
        pending(product, fake_stripe, age=timedelta(hours=1 + i % 20))[0] for i in range(120)
    ]
    recent, recent_id = pending(product, fake_stripe, age=timedelta(minutes=5))
    fake_stripe.pay(recent_id)

    assert reconcile() == "fulfilled 1, not_paid 49"
    assert status(recent) == Purchase.Status.PAID
    reconcile()
    reconcile()
    checks = Purchase.objects.filter(pk__in=[p.pk for p in abandoned])
    assert set(checks.values_list("reconcile_checks", flat=True)) == {1}
    # Nothing is due again yet: the next check of each waits a growing while.
    fake_stripe.requests.clear()
    assert reconcile() == "nothing pending"
    assert fake_stripe.requests == []


def test_each_pending_purchase_is_checked_a_bounded_number_of_times_with_growing_spacing(
    product, fake_stripe
):
    purchase, _ = pending(product, fake_stripe, age=timedelta(0))
    purchase.refresh_from_db()
    start = purchase.created_at
    checked_at = []
    minute = start
    while minute < start + reconciliation.RECONCILE_WINDOW + timedelta(hours=1):
        if reconciliation.check_pending(now=minute):
            checked_at.append(minute - start)
        minute += timedelta(minutes=1)

    assert len(checked_at) <= reconciliation.MAX_CHECKS
    assert len(checked_at) >= 10
    assert checked_at[0] == timedelta(minutes=2)
    gaps = [b - a for a, b in zip(checked_at, checked_at[1:], strict=False)]
    assert gaps[:6] == [timedelta(minutes=m) for m in (4, 8, 16, 32, 64, 128)]
    assert max(gaps) <= reconciliation.MAX_CHECK_SPACING
    # One check falls just after the session must have expired, so it is seen expired.
    expiry = reconciliation.SESSION_LIFETIME + reconciliation.EXPIRY_MARGIN
    assert any(expiry <= at < expiry + timedelta(minutes=2) for at in checked_at)
    assert checked_at[-1] < reconciliation.RECONCILE_WINDOW
    purchase.refresh_from_db()
    assert purchase.reconcile_checks == len(checked_at)
