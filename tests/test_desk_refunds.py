"""Refunds through Stripe from the shop desk, through the admin's URLs: who may refund, the
confirmation, partial then full, a confirmation sent twice, amounts beyond what is left, Stripe
down or refusing, and the ``charge.refunded`` webhook that follows finding nothing to do."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from wagtail.models import ModelLogEntry

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import needs_postgres
from tests.test_shop_desk import assert_refused, desk_user, url
from wagtail_paid_delivery import desk, timeline
from wagtail_paid_delivery.models import DownloadLink, Purchase, StripeEvent

pytestmark = pytest.mark.django_db

S = Purchase.Status


@pytest.fixture
def sold(client, home, fake_stripe, django_capture_on_commit_callbacks):
    """A $12.50 purchase paid through (fake) Stripe Checkout and delivered by its webhook."""
    product = ProductPageFactory(parent=home, title="Field Guide", price_amount=1250)
    purchase = PurchaseFactory(product=product, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == S.PAID
    return purchase


def confirmation_key(client, purchase) -> str:
    """The key the confirmation page made for this form (as a browser would send it back)."""
    page = client.get(url("refund", purchase.pk))
    assert page.status_code == 200
    return re.search(r'name="key" value="([0-9a-f]{32})"', page.content.decode())[1]


def refund(client, purchase, amount: str, *, key: str | None = None, **extra):
    data = {
        "amount": amount,
        "reason": "requested_by_customer",
        "note": "Asked by email",
        "key": key or confirmation_key(client, purchase),
        **extra,
    }
    return client.post(url("refund", purchase.pk), data)


def refund_entries(purchase) -> list[ModelLogEntry]:
    return list(
        ModelLogEntry.objects.filter(object_id=str(purchase.pk), action=desk.REFUND).order_by("pk")
    )


def stripe_refunds(fake_stripe) -> list:
    return fake_stripe.calls("post", "/v1/refunds")


def messages_of(client, response) -> str:
    return client.get(response["Location"]).content.decode()


# The confirmation ------------------------------------------------------------------------------


def test_confirmation_page_says_what_is_left_and_what_happens(admin_client, sold):
    page = admin_client.get(url("refund", sold.pk))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Refund through Stripe" in html
    assert "Left to refund" in html and "$12.50" in html
    assert 'name="amount" value="12.50"' in html
    for reason in ("requested_by_customer", "duplicate", "fraudulent"):
        assert f'value="{reason}"' in html
    assert "ends the buyer&#x27;s access for good" in html
    # The inspect view offers it.
    assert url("refund", sold.pk) in admin_client.get(url("inspect", sold.pk)).content.decode()


def test_partial_then_full_refund(
    client, admin_client, admin_user, sold, fake_stripe, django_capture_on_commit_callbacks
):
    response = refund(admin_client, sold, "5.00")
    assert response.status_code == 302 and response["Location"] == url("inspect", sold.pk)
    sold.refresh_from_db()
    # A partial refund keeps access (PARTIAL_REFUND_POLICY "keep"), as a Dashboard refund does.
    assert (sold.status, sold.amount_refunded) == (S.PAID, 500)
    call = stripe_refunds(fake_stripe)[0]
    assert call.params["payment_intent"] == sold.stripe_payment_intent_id
    assert (call.params["amount"], call.params["reason"]) == ("500", "requested_by_customer")
    assert call.params["metadata"]["wpd_purchase"] == str(sold.public_id)
    assert call.idempotency_key.startswith(f"wpd-refund-{sold.public_id}-")
    page = messages_of(admin_client, response)
    assert "Refunded $5.00 through Stripe" in page and "buyer keeps access" in page

    (entry,) = refund_entries(sold)
    assert entry.user == admin_user
    assert entry.data["amount"] == 500 and entry.data["refund"].startswith("re_")
    assert "ada@example.com" not in str(entry.data) + entry.label
    assert entry.comment == "Asked by email"

    # What is left is offered next, and the rest refunds in full: access ends.
    assert 'name="amount" value="7.50"' in admin_client.get(url("refund", sold.pk)).content.decode()
    response = refund(admin_client, sold, "7.50")
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.REFUNDED, 1250)
    assert not DownloadLink.objects.filter(purchase=sold, revoked_at=None).exists()
    assert "access ended" in messages_of(admin_client, response)
    assert len(refund_entries(sold)) == 2

    # Site history and the timeline show both, with the editor.
    history = admin_client.get(reverse("wagtailadmin_reports:site_history")).content.decode()
    assert "Refunded $5.00 through Stripe" in history and "Refunded $7.50" in history
    titles = [e.title for e in timeline.build_timeline(sold)]
    assert any(
        t.startswith("Refunded $5.00 through Stripe (requested by the buyer)") for t in titles
    )
    assert "Refunded: access ended" in titles
    # Nothing is left: the action is no longer offered, and refused.
    assert url("refund", sold.pk) not in admin_client.get(url("inspect", sold.pk)).content.decode()
    again = refund(admin_client, sold, "1.00", key="a" * 32)
    assert "refunded in full" in messages_of(admin_client, again)
    assert len(stripe_refunds(fake_stripe)) == 2


def test_the_webhooks_for_the_same_refunds_change_nothing(
    client, admin_client, sold, fake_stripe, django_capture_on_commit_callbacks
):
    refund(admin_client, sold, "5.00")
    refund(admin_client, sold, "7.50")
    sold.refresh_from_db()
    before = (sold.status, sold.amount_refunded, sold.refunded_at, sold.status_reason)
    for event in [
        e for e in fake_stripe.events if e["type"] in ("charge.refunded", "refund.created")
    ]:
        with django_capture_on_commit_callbacks(execute=True):
            assert post_event(client, event).status_code == 200
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded, sold.refunded_at, sold.status_reason) == before
    handled = StripeEvent.objects.filter(type="charge.refunded")
    assert {e.status for e in handled} == {StripeEvent.Status.PROCESSED}
    assert len(refund_entries(sold)) == 2

    # The timeline shows Stripe's side too, with the amounts.
    details = {(e.title, e.detail) for e in timeline.build_timeline(sold) if e.kind == "stripe"}
    charges = [d for t, d in details if t == "Charge refunded"]
    assert any("$5.00 of $12.50 refunded" in d for d in charges)
    assert any("$12.50 of $12.50 refunded" in d for d in charges)
    created = sorted(d for t, d in details if t == "Refund created")
    assert len(created) == 2 and all("noted (the charge.refunded event" in d for d in created)
    assert any("$7.50 succeeded" in d for d in created)
    page = admin_client.get(url("inspect", sold.pk)).content.decode()
    assert "Refund created" in page and "$5.00 of $12.50 refunded" in page


def test_a_partial_refund_revokes_when_the_policy_says_so(admin_client, sold, settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "PARTIAL_REFUND_POLICY": "revoke",
    }
    response = refund(admin_client, sold, "2.50")
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.REFUNDED, 250)
    assert "access ended" in messages_of(admin_client, response)
    # The rest may still be refunded: the money is not all back yet.
    refund(admin_client, sold, "10.00")
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.REFUNDED, 1250)


def test_a_revoked_purchase_can_still_be_refunded_and_stays_revoked(admin_client, sold):
    desk.revoke_access(sold, user=None, reason="Abuse")
    response = refund(admin_client, sold, "12.50")
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.REVOKED, 1250)
    assert "stays revoked" in messages_of(admin_client, response)


# Twice, too much, Stripe down or refusing ------------------------------------------------------


def test_a_confirmation_sent_twice_refunds_once(admin_client, sold, fake_stripe):
    key = confirmation_key(admin_client, sold)
    first = refund(admin_client, sold, "5.00", key=key)
    second = refund(admin_client, sold, "5.00", key=key)
    assert first.status_code == second.status_code == 302
    sold.refresh_from_db()
    assert sold.amount_refunded == 500
    assert len(refund_entries(sold)) == 1
    assert len(stripe_refunds(fake_stripe)) == 1
    assert "already carried out" in messages_of(admin_client, second)
    # A full refund sent twice: the second is not refused as "nothing left", it is recognised.
    key = confirmation_key(admin_client, sold)
    refund(admin_client, sold, "7.50", key=key)
    again = refund(admin_client, sold, "7.50", key=key)
    assert "already carried out" in messages_of(admin_client, again)
    assert len(refund_entries(sold)) == 2


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_confirmations_with_one_key_refund_once(client, home, fake_stripe, admin_user):
    product = ProductPageFactory(parent=home, price_amount=1250)
    purchase = PurchaseFactory(product=product, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    post_event(client, event_for(fake_stripe.session(session_id)))
    purchase.refresh_from_db()
    key = "b" * 32

    def confirm():
        from django.test import Client

        browser = Client()
        browser.force_login(admin_user)
        return refund(browser, purchase, "12.50", key=key).status_code

    assert run_at_once([confirm, confirm]) == [302, 302]
    purchase.refresh_from_db()
    assert (purchase.status, purchase.amount_refunded) == (S.REFUNDED, 1250)
    assert len(refund_entries(purchase)) == 1
    charge = fake_stripe.charge(session_id)
    assert len(charge["refunds"]["data"]) == 1


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        ("12.51", "more than what is left to refund ($12.50)"),
        ("0", "must be more than zero"),
        ("-1", "must be more than zero"),
        ("1.005", "at most 2 decimal places"),
        ("NaN", "Enter a number"),
        ("", "This field is required"),
    ],
)
def test_amounts_beyond_what_is_left_are_refused_before_stripe(
    admin_client, sold, fake_stripe, amount, error
):
    response = refund(admin_client, sold, amount)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert stripe_refunds(fake_stripe) == []
    sold.refresh_from_db()
    assert sold.amount_refunded == 0


def test_a_zero_decimal_currency_is_refunded_in_whole_units(
    client, admin_client, home, fake_stripe, django_capture_on_commit_callbacks
):
    product = ProductPageFactory(parent=home, price_amount=1500, currency="JPY")
    purchase = PurchaseFactory(product=product, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        post_event(client, event_for(fake_stripe.session(session_id)))
    page = admin_client.get(url("refund", purchase.pk)).content.decode()
    assert "Amount to refund (JPY)" in page and 'value="1500"' in page
    assert "at most 0 decimal places" in refund(admin_client, purchase, "500.5").content.decode()
    refund(admin_client, purchase, "500")
    purchase.refresh_from_db()
    assert (purchase.status, purchase.amount_refunded) == (S.PAID, 500)
    assert stripe_refunds(fake_stripe)[0].params["amount"] == "500"


def test_a_discounted_charge_refunded_in_full_offers_nothing_more(
    client, admin_client, home, fake_stripe, django_capture_on_commit_callbacks
):
    product = ProductPageFactory(parent=home, price_amount=1250)
    purchase = PurchaseFactory(product=product, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com", amount_discount=250)
    with django_capture_on_commit_callbacks(execute=True):
        post_event(client, event_for(fake_stripe.session(session_id)))
    page = admin_client.get(url("refund", purchase.pk)).content.decode()
    assert "$10.00" in page and 'name="amount" value="10.00"' in page
    assert "more than what is left" in refund(admin_client, purchase, "12.50").content.decode()
    refund(admin_client, purchase, "10.00")
    purchase.refresh_from_db()
    assert (purchase.status, purchase.amount_refunded) == (S.REFUNDED, 1000)
    page = admin_client.get(url("refund", purchase.pk)).content.decode()
    assert "Nothing is left to refund" in page and 'name="amount"' not in page


def test_a_reason_stripe_does_not_know_is_refused(admin_client, sold, fake_stripe):
    response = refund(admin_client, sold, "1.00", reason="because")
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    response = refund(admin_client, sold, "1.00", key="not a key")
    assert response.status_code == 200
    assert stripe_refunds(fake_stripe) == []


def test_more_than_is_left_at_stripe_is_refused_with_stripes_words(admin_client, sold, fake_stripe):
    """A refund made in Stripe's Dashboard whose webhook has not arrived: we think 12.50 is
    left, Stripe knows better."""
    fake_stripe.refund(sold.stripe_checkout_session_id, amount=1000)
    response = refund(admin_client, sold, "5.00")
    assert response["Location"] == url("refund", sold.pk)
    page = messages_of(admin_client, response)
    assert "Stripe refused the refund" in page and "greater than unrefunded amount" in page
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.PAID, 0)
    assert refund_entries(sold) == []


def test_stripe_down_refunds_nothing_and_the_same_confirmation_works_later(
    admin_client, sold, fake_stripe
):
    key = confirmation_key(admin_client, sold)
    fake_stripe.set_down(True)
    response = refund(admin_client, sold, "5.00", key=key)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Stripe could not be reached" in html and f'value="{key}"' in html
    sold.refresh_from_db()
    assert sold.amount_refunded == 0 and refund_entries(sold) == []

    fake_stripe.set_down(False)
    refund(admin_client, sold, "5.00", key=key)
    sold.refresh_from_db()
    assert sold.amount_refunded == 500
    assert len(refund_entries(sold)) == 1


def test_stripe_down_after_the_refund_leaves_the_purchase_to_the_webhook(
    client, admin_client, sold, fake_stripe, django_capture_on_commit_callbacks
):
    # Stripe answers the refund, then cannot be reached to read the charge back.
    fake_stripe.set_down(True, after=1)
    response = refund(admin_client, sold, "12.50")
    fake_stripe.set_down(False)
    assert "when Stripe&#x27;s event about the refund arrives" in messages_of(
        admin_client, response
    )
    sold.refresh_from_db()
    assert sold.status == S.PAID and len(refund_entries(sold)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        post_event(client, fake_stripe.last_event("charge.refunded"))
    sold.refresh_from_db()
    assert (sold.status, sold.amount_refunded) == (S.REFUNDED, 1250)
    assert len(refund_entries(sold)) == 1


# Who may refund, and what may be refunded ------------------------------------------------------


def test_only_editors_with_the_refund_permission_may_refund(client, sold, fake_stripe):
    for codenames in [(), ("view_purchase",), ("view_purchase", "support_purchase")]:
        user = desk_user(*codenames, username=f"user{len(codenames)}")
        client.force_login(user)
        assert_refused(client, url("refund", sold.pk))
        assert_refused(client, url("refund", sold.pk), "post", {"amount": "1", "key": "c" * 32})
        if codenames:
            inspect = client.get(url("inspect", sold.pk)).content.decode()
            assert url("refund", sold.pk) not in inspect
    # The refund permission alone, without view, is refused too.
    client.force_login(desk_user("refund_purchase", username="refunder"))
    assert_refused(client, url("refund", sold.pk))
    assert stripe_refunds(fake_stripe) == []

    client.force_login(desk_user("view_purchase", "refund_purchase", username="cashier"))
    assert url("refund", sold.pk) in client.get(url("inspect", sold.pk)).content.decode()
    refund(client, sold, "12.50")
    sold.refresh_from_db()
    assert sold.status == S.REFUNDED


def test_what_cannot_be_refunded_is_refused(admin_client, home, fake_stripe):
    product = ProductPageFactory(parent=home)
    cases = {
        "granted": PurchaseFactory(product=product, paid=True, source=Purchase.Source.GRANT),
        "pending": PurchaseFactory(product=product, stripe_payment_intent_id="pi_1"),
        "disputed": PurchaseFactory(
            product=product, paid=True, status=S.DISPUTED, stripe_payment_intent_id="pi_2"
        ),
    }
    expected = {
        "granted": "Only a payment made through Stripe Checkout",
        "pending": "Only a paid purchase can be refunded",
        "disputed": "settled through the dispute",
    }
    for name, purchase in cases.items():
        assert expected[name] in admin_client.get(url("refund", purchase.pk)).content.decode()
        response = refund(admin_client, purchase, "1.00", key="d" * 32)
        assert expected[name] in messages_of(admin_client, response), name
    assert stripe_refunds(fake_stripe) == []


def test_a_discounted_payment_refunded_in_full_is_not_offered_another_refund(admin_client, home):
    """Full means what the buyer was charged (after a promotion code, with tax), which may be
    less than the product's price: no "Refund through Stripe" button is left to confuse."""
    purchase = PurchaseFactory(
        status=S.REFUNDED,
        amount=1900,
        amount_total=1672,
        amount_refunded=1672,
        stripe_payment_intent_id="pi_discounted",
    )
    assert desk.refusal(desk.REFUND, purchase) == (
        "Nothing is left to refund: the charge is refunded in full."
    )
    page = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert url("refund", purchase.pk) not in page
    assert "No: the purchase is refunded (" in page and ".)." not in page
    # Part of it refunded: the rest is still offered.
    purchase.amount_refunded = 1000
    purchase.status = S.PAID
    purchase.save()
    assert desk.refusal(desk.REFUND, purchase) == ""
