"""Pay what you want: the page's price is the minimum, the buyer chooses the amount at Checkout.

Checkout sells through a Stripe Price with ``custom_unit_amount`` the shop makes (once per
minimum and currency); fulfillment accepts a subtotal at or above the minimum, before discounts,
and refuses one below it like any other amount mismatch.
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.factories import ProductPageFactory
from tests.stripe_fake import event_for, post_event
from tests.test_product_admin import add_url, form_errors, product_data, two_files
from wagtail_paid_delivery.models import Purchase
from wagtail_paid_delivery.product.models import ProductPage

ORIGIN = "http://testserver"


@pytest.fixture
def product(home):
    return ProductPageFactory(
        parent=home, title="Field guide", price_amount=500, currency="USD", pay_what_you_want=True
    )


def buy(client, page) -> Purchase:
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[page.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 303, response.status_code
    return Purchase.objects.latest("created_at")


def price_posts(fake_stripe):
    return fake_stripe.calls("post", "/v1/prices")


def pay_and_notify(client, fake_stripe, purchase, chosen, capture, **pay):
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com", chosen_amount=chosen, **pay)
    with capture(execute=True):
        response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    purchase.refresh_from_db()
    return purchase


def test_product_page_says_pay_what_you_want_from_the_minimum(client, product):
    html = client.get(product.url).content.decode()
    assert "Pay what you want, from $5.00" in html
    assert "Buy now: choose your price" in html


def test_checkout_makes_the_custom_price_once_and_sells_through_it(client, product, fake_stripe):
    first = buy(client, product)

    [call] = price_posts(fake_stripe)
    assert call.params["custom_unit_amount"] == {
        "enabled": "true",
        "minimum": "500",
        "preset": "500",
    }
    assert call.params["currency"] == "usd"
    assert call.idempotency_key == f"wpd-custom-price-{product.pk}-USD-500"
    product.refresh_from_db()
    assert product.custom_price_id.startswith("price_")
    assert product.custom_price_terms == f"USD 500 {product.pk}"
    [session_call] = fake_stripe.calls("post", "/v1/checkout/sessions")
    assert session_call.params["line_items"] == [
        {"price": product.custom_price_id, "quantity": "1"}
    ]
    assert first.amount == 500

    # Another buyer: the same Price, no new one.
    buy(Client(), product)
    assert len(price_posts(fake_stripe)) == 1


def test_a_new_minimum_makes_a_new_price(client, product, fake_stripe):
    buy(client, product)
    product.refresh_from_db()
    old = product.custom_price_id
    product.price_amount = 800
    product.save()

    buy(Client(), product)  # another browser

    product.refresh_from_db()
    assert product.custom_price_id != old
    assert product.custom_price_terms == f"USD 800 {product.pk}"
    assert [c.params["custom_unit_amount"]["minimum"] for c in price_posts(fake_stripe)] == [
        "500",
        "800",
    ]


def test_stripe_down_while_making_the_price_shows_unavailable_and_keeps_no_purchase(
    client, product, fake_stripe
):
    fake_stripe.set_down()
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 503
    assert not Purchase.objects.exists()
    product.refresh_from_db()
    assert product.custom_price_id == ""


def test_paying_above_the_minimum_fulfills_and_the_receipt_shows_it(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product)

    purchase = pay_and_notify(
        client, fake_stripe, purchase, 1200, django_capture_on_commit_callbacks
    )

    assert purchase.status == Purchase.Status.PAID
    assert purchase.amount == 1200  # sales figures and refunds count what was paid
    assert purchase.amount_subtotal == purchase.amount_total == 1200
    [email] = mail.outbox
    assert "$12.00" in email.body
    thanks = client.get(
        reverse("wagtail_paid_delivery:success"),
        {"session_id": purchase.stripe_checkout_session_id},
    )
    assert "$12.00" in thanks.content.decode()


def test_paying_exactly_the_minimum_fulfills(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product)
    purchase = pay_and_notify(
        client, fake_stripe, purchase, 500, django_capture_on_commit_callbacks
    )
    assert purchase.status == Purchase.Status.PAID
    assert purchase.amount == 500


def test_the_minimum_is_checked_before_discounts(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product)
    purchase = pay_and_notify(
        client,
        fake_stripe,
        purchase,
        600,
        django_capture_on_commit_callbacks,
        amount_discount=300,
    )
    assert purchase.status == Purchase.Status.PAID
    assert purchase.amount == 600
    assert purchase.amount_total == 300


def test_a_subtotal_below_the_minimum_is_refused(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product)

    purchase = pay_and_notify(
        client, fake_stripe, purchase, 499, django_capture_on_commit_callbacks
    )

    assert purchase.status == Purchase.Status.FAILED
    assert "subtotal 499 < minimum 500" in purchase.status_reason
    assert purchase.amount == 500
    assert mail.outbox == []


def test_a_custom_price_with_a_lower_minimum_is_refused(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product)
    item = fake_stripe.line_items[purchase.stripe_checkout_session_id][0]
    item["price"]["custom_unit_amount"]["minimum"] = 100

    purchase = pay_and_notify(
        client, fake_stripe, purchase, 700, django_capture_on_commit_callbacks
    )

    assert purchase.status == Purchase.Status.FAILED
    assert "custom price minimum 100 < 500" in purchase.status_reason


def test_a_fixed_price_purchase_still_needs_the_exact_amount(
    client, home, fake_stripe, django_capture_on_commit_callbacks
):
    fixed = ProductPageFactory(parent=home, price_amount=500)
    purchase = buy(client, fixed)
    fake_stripe.tamper_line_item(purchase.stripe_checkout_session_id, unit_amount=900)

    purchase = pay_and_notify(
        client, fake_stripe, purchase, None, django_capture_on_commit_callbacks
    )

    assert purchase.status == Purchase.Status.FAILED
    assert "unit amount 900 != 500" in purchase.status_reason


def test_editor_publishes_pay_what_you_want(admin_client, home):
    response = admin_client.post(
        add_url(home), product_data(two_files(), price_amount="5", pay_what_you_want="on")
    )
    assert response.status_code == 302
    page = ProductPage.objects.get()
    assert page.pay_what_you_want and page.price_amount == 500


def test_editor_cannot_combine_pay_what_you_want_with_a_stripe_price_id(
    admin_client, home, fake_stripe
):
    price = fake_stripe.add_price(500, "usd")
    response = admin_client.post(
        add_url(home),
        product_data(
            two_files(), price_amount="5", pay_what_you_want="on", stripe_price_id=price["id"]
        ),
    )
    errors = form_errors(response)
    assert errors["stripe_price_id"] == [
        "Pay what you want sells through a Price the shop makes itself. Leave the Stripe Price "
        "id empty, or turn pay what you want off."
    ]
    assert not ProductPage.objects.exists()


def test_editor_still_needs_a_minimum_above_zero(admin_client, home):
    response = admin_client.post(
        add_url(home), product_data(two_files(), price_amount="0", pay_what_you_want="on")
    )
    assert form_errors(response)["price_amount"] == ["Enter a price above zero."]


def test_a_copied_page_gets_its_own_price(client, product, fake_stripe):
    buy(client, product)
    product.refresh_from_db()
    copy = product.copy(update_attrs={"slug": "field-guide-2", "title": "Field guide 2"})

    buy(Client(), copy)

    copy.refresh_from_db()
    assert copy.custom_price_id not in ("", product.custom_price_id)
    assert copy.custom_price_terms == f"USD 500 {copy.pk}"
    assert len(price_posts(fake_stripe)) == 2
