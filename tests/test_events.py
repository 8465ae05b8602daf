"""Every payment event type, through the real webhook URL, against the in-memory Stripe.

Events are notifications: the task re-reads the session, the PaymentIntent's latest charge and
its disputes, so each test also shows that the order of delivery does not matter.
"""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.factories import DownloadLinkFactory, ProductPageFactory, PurchaseFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import Receiver
from wagtail_paid_delivery import signals
from wagtail_paid_delivery.fulfillment import fulfill_checkout
from wagtail_paid_delivery.inbox import ignore_reason
from wagtail_paid_delivery.models import DownloadLink, Purchase, StripeEvent


@pytest.fixture
def send(client, django_capture_on_commit_callbacks):
    """Post an event (signed, through the webhook) and run what the view queued."""

    def send(obj, type_):
        with django_capture_on_commit_callbacks(execute=True):
            response = post_event(client, event_for(obj, type_))
        assert response.status_code == 200
        return StripeEvent.objects.order_by("-pk").first()

    return send


@pytest.fixture
def session_id(purchase, fake_stripe):
    return start_checkout(fake_stripe, purchase)


@pytest.fixture
def paid(purchase, fake_stripe, session_id, send):
    """A purchase paid and fulfilled through checkout.session.completed, with a link."""
    fake_stripe.pay(session_id, email="ada@example.com")
    send(fake_stripe.session(session_id), "checkout.session.completed")
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    return purchase


def status(purchase) -> str:
    purchase.refresh_from_db()
    return purchase.status


# Checkout Session events ----------------------------------------------------------------------


def test_async_payment_completed_then_succeeded(purchase, fake_stripe, session_id, send):
    Purchase.objects.filter(pk=purchase.pk).update(email="")
    fake_stripe.pay(session_id, payment_status="unpaid", email="ada@example.com")
    event = send(fake_stripe.session(session_id), "checkout.session.completed")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(purchase) == Purchase.Status.PENDING
    # The "processing" page can say where the link will go.
    assert purchase.email == "ada@example.com"

    fake_stripe.settle(session_id)
    with Receiver(signals.purchase_paid) as delivered:
        send(fake_stripe.session(session_id), "checkout.session.async_payment_succeeded")
    assert status(purchase) == Purchase.Status.PAID
    assert len(delivered.calls) == 1


def test_async_payment_failed_marks_failed(purchase, fake_stripe, session_id, send):
    fake_stripe.pay(session_id, payment_status="unpaid")
    send(fake_stripe.session(session_id), "checkout.session.completed")
    fake_stripe.fail_async(session_id, "Insufficient funds.")
    event = send(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(purchase) == Purchase.Status.FAILED
    assert purchase.failed_at is not None
    assert "Insufficient funds." in purchase.status_reason


def test_async_succeeded_arriving_before_completed(purchase, fake_stripe, session_id, send):
    fake_stripe.pay(session_id, payment_status="unpaid")
    stale_completed = fake_stripe.session(session_id)
    fake_stripe.settle(session_id)
    with Receiver(signals.purchase_paid) as delivered:
        send(fake_stripe.session(session_id), "checkout.session.async_payment_succeeded")
        # The older notification, delivered late, re-reads Stripe: still paid, once.
        event = send(stale_completed, "checkout.session.completed")
    assert status(purchase) == Purchase.Status.PAID
    assert len(delivered.calls) == 1
    assert event.status == StripeEvent.Status.PROCESSED


def test_expired_session_marks_expired(purchase, fake_stripe, session_id, send):
    fake_stripe.expire(session_id)
    event = send(fake_stripe.session(session_id), "checkout.session.expired")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(purchase) == Purchase.Status.EXPIRED
    assert purchase.expired_at is not None


def test_expired_event_for_a_paid_purchase_changes_nothing(paid, fake_stripe, session_id, send):
    # A stale "expired" notification cannot undo a payment: Stripe says complete and paid.
    stale = {**fake_stripe.session(session_id), "status": "expired", "payment_status": "unpaid"}
    send(stale, "checkout.session.expired")
    assert status(paid) == Purchase.Status.PAID


# PaymentIntent and invoice events --------------------------------------------------------------


def test_payment_intent_succeeded_fulfils_by_its_metadata(purchase, fake_stripe, session_id, send):
    fake_stripe.pay(session_id)
    with Receiver(signals.purchase_paid) as delivered:
        event = send(fake_stripe.payment_intent(session_id), "payment_intent.succeeded")
        send(fake_stripe.session(session_id), "checkout.session.completed")
    assert event.status == StripeEvent.Status.PROCESSED
    assert event.purchase == purchase
    assert status(purchase) == Purchase.Status.PAID
    assert len(delivered.calls) == 1


def test_payment_intent_of_another_integration_is_ignored(home, fake_stripe, send):
    other = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, other, installation="another-site")
    fake_stripe.pay(session_id)
    event = send(fake_stripe.payment_intent(session_id), "payment_intent.succeeded")
    assert event.status == StripeEvent.Status.IGNORED
    assert "not this installation" in event.last_error
    assert status(other) == Purchase.Status.PENDING


def test_payment_intent_unknown_locally_is_mapped_through_stripe(
    purchase, fake_stripe, session_id, send
):
    # A charge event (no metadata of ours copied) for a purchase that does not know its
    # PaymentIntent yet: the task asks Stripe for the PaymentIntent's metadata.
    fake_stripe.pay(session_id)
    charge = fake_stripe.charge(session_id)
    charge["metadata"] = {}
    event = send(charge, "charge.refunded")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(purchase) == Purchase.Status.PAID
    assert purchase.stripe_payment_intent_id == charge["payment_intent"]


def test_invoice_payment_succeeded_fulfils_by_invoice_metadata(
    purchase, fake_stripe, session_id, send
):
    fake_stripe.pay(session_id)
    metadata = fake_stripe.session(session_id)["metadata"]
    invoice = {"id": "in_test_1", "object": "invoice", "status": "paid", "metadata": metadata}
    event = send(invoice, "invoice.payment_succeeded")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(purchase) == Purchase.Status.PAID


# Refunds ---------------------------------------------------------------------------------------


def test_full_refund_revokes_access_and_links(paid, fake_stripe, session_id, send):
    link = DownloadLinkFactory(purchase=paid)
    with Receiver(signals.purchase_revoked) as revoked:
        event = send(fake_stripe.refund(session_id), "charge.refunded")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(paid) == Purchase.Status.REFUNDED
    assert paid.amount_refunded == 1250 and paid.refunded_at is not None
    assert DownloadLink.objects.get(pk=link.pk).revoked_at is not None
    assert len(revoked.calls) == 1


def test_partial_refund_is_recorded_and_access_kept_by_default(paid, fake_stripe, session_id, send):
    event = send(fake_stripe.refund(session_id, 250), "charge.refunded")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(paid) == Purchase.Status.PAID
    assert paid.amount_refunded == 250
    # A second partial refund that completes it: refunded.
    send(fake_stripe.refund(session_id, 1000), "charge.refunded")
    assert status(paid) == Purchase.Status.REFUNDED
    assert paid.amount_refunded == 1250


def test_partial_refund_revokes_when_the_policy_says_so(paid, fake_stripe, session_id, send):
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "PARTIAL_REFUND_POLICY": "revoke"}):
        send(fake_stripe.refund(session_id, 250), "charge.refunded")
    assert status(paid) == Purchase.Status.REFUNDED
    assert "PARTIAL_REFUND_POLICY" in paid.status_reason


def test_refund_before_completed_leaves_the_purchase_refunded(
    purchase, fake_stripe, session_id, send
):
    fake_stripe.pay(session_id)
    completed = fake_stripe.session(session_id)
    charge = fake_stripe.refund(session_id)
    with Receiver(signals.purchase_paid) as delivered:
        send(charge, "charge.refunded")
        send(completed, "checkout.session.completed")
    assert status(purchase) == Purchase.Status.REFUNDED
    assert purchase.paid_at is None
    assert delivered.calls == []


def test_fulfill_checkout_does_not_deliver_a_refunded_payment(purchase, fake_stripe, session_id):
    fake_stripe.pay(session_id)
    fake_stripe.refund(session_id)
    result = fulfill_checkout(session_id)
    assert result.outcome == "refunded"
    assert status(purchase) == Purchase.Status.REFUNDED


# Disputes --------------------------------------------------------------------------------------


def test_dispute_suspends_and_a_won_dispute_restores(paid, fake_stripe, session_id, send):
    link = DownloadLinkFactory(purchase=paid)
    event = send(fake_stripe.dispute(session_id), "charge.dispute.created")
    assert event.status == StripeEvent.Status.PROCESSED
    assert status(paid) == Purchase.Status.DISPUTED
    assert paid.disputed_at is not None

    with Receiver(signals.purchase_restored) as restored:
        send(fake_stripe.close_dispute(session_id, "won"), "charge.dispute.closed")
    assert status(paid) == Purchase.Status.PAID
    assert len(restored.calls) == 1
    assert DownloadLink.objects.get(pk=link.pk).revoked_at is None


def test_lost_dispute_is_final(paid, fake_stripe, session_id, send):
    send(fake_stripe.dispute(session_id), "charge.dispute.created")
    send(fake_stripe.close_dispute(session_id, "lost"), "charge.dispute.closed")
    assert status(paid) == Purchase.Status.REFUNDED
    assert "lost" in paid.status_reason
    # A late "created" notification does not bring the suspension (or access) back.
    send(fake_stripe.disputes[next(iter(fake_stripe.disputes))], "charge.dispute.created")
    assert status(paid) == Purchase.Status.REFUNDED


def test_dispute_policy_ignore_keeps_access(paid, fake_stripe, session_id, send):
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "DISPUTE_POLICY": "ignore"}):
        send(fake_stripe.dispute(session_id), "charge.dispute.created")
        assert status(paid) == Purchase.Status.PAID
        send(fake_stripe.close_dispute(session_id, "lost"), "charge.dispute.closed")
        assert status(paid) == Purchase.Status.REFUNDED


def test_dispute_before_paid_holds_delivery_until_won(purchase, fake_stripe, session_id, send):
    fake_stripe.pay(session_id)
    completed = fake_stripe.session(session_id)
    dispute = fake_stripe.dispute(session_id)
    with Receiver(signals.purchase_paid) as delivered:
        send(dispute, "charge.dispute.created")
        assert status(purchase) == Purchase.Status.DISPUTED
        send(completed, "checkout.session.completed")
        assert status(purchase) == Purchase.Status.DISPUTED
        assert delivered.calls == []

        send(fake_stripe.close_dispute(session_id, "won"), "charge.dispute.closed")
    assert status(purchase) == Purchase.Status.PAID
    assert purchase.paid_at is not None
    assert len(delivered.calls) == 1


# An editor's revoke ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "type_", ["checkout.session.completed", "charge.dispute.closed", "payment_intent.succeeded"]
)
def test_no_webhook_undoes_an_editors_revoke(paid, fake_stripe, session_id, send, type_):
    Purchase.objects.filter(pk=paid.pk).update(status=Purchase.Status.REVOKED)
    if type_ == "charge.dispute.closed":
        fake_stripe.dispute(session_id)
        obj = fake_stripe.close_dispute(session_id, "won")
    elif type_ == "payment_intent.succeeded":
        obj = fake_stripe.payment_intent(session_id)
    else:
        obj = fake_stripe.session(session_id)
    event = send(obj, type_)
    assert status(paid) == Purchase.Status.REVOKED
    assert "revoked by an editor" in event.last_error


# What the webhook view decides from the payload alone ------------------------------------------


@pytest.mark.parametrize(
    ("obj", "type_", "expected"),
    [
        ({"object": "charge", "payment_intent": None}, "charge.refunded", "no PaymentIntent"),
        ({"object": "dispute", "payment_intent": "pi_1"}, "charge.dispute.created", ""),
        (
            {"object": "charge", "payment_intent": "pi_1", "metadata": {"wpd_installation": "x"}},
            "charge.refunded",
            "not this installation",
        ),
        ({"object": "payment_intent", "metadata": {}}, "payment_intent.succeeded", "not this"),
        ({"object": "invoice", "metadata": {}}, "invoice.payment_succeeded", "not this"),
        ({"object": "charge", "payment_intent": "pi_1"}, "charge.succeeded", "unhandled"),
    ],
)
def test_ignore_reason_reads_only_the_payload(db, fake_stripe, obj, type_, expected):
    reason = ignore_reason(event_for({"id": "x", **obj}, type_))
    assert (expected in reason) if expected else reason == ""
    assert fake_stripe.requests == []
