"""The Buy button: POST checkout/<page id>/ makes a Purchase and a Checkout Session, 303s."""

from __future__ import annotations

import logging

import pytest
from django.core import signing
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.testapp.models import HomePage
from wagtail_paid_delivery import binding
from wagtail_paid_delivery.models import Purchase
from wagtail_paid_delivery.product.models import ProductPage

ORIGIN = "http://testserver"


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250, currency="USD")


def checkout_url(page) -> str:
    return reverse("wagtail_paid_delivery:checkout", args=[page.pk])


def buy(client, page, **headers):
    headers.setdefault("HTTP_ORIGIN", ORIGIN)
    return client.post(checkout_url(page), **headers)


def session_calls(fake_stripe):
    return fake_stripe.calls("post", "/v1/checkout/sessions")


def test_checkout_redirects_303_to_a_payment_session_built_from_the_page(
    client, product, fake_stripe
):
    response = buy(client, product)

    assert response.status_code == 303
    purchase = Purchase.objects.get()
    session = fake_stripe.sessions[purchase.stripe_checkout_session_id]
    assert response["Location"] == session["url"]
    assert "no-store" in response["Cache-Control"]

    [call] = session_calls(fake_stripe)
    params = call.params
    assert params["mode"] == "payment"
    assert params["line_items"] == [
        {
            "price_data": {
                "currency": "usd",
                "unit_amount": "1250",
                "product_data": {"name": "Field guide"},
            },
            "quantity": "1",
        }
    ]
    metadata = {
        "wpd_installation": "tests",
        "wpd_purchase": str(purchase.public_id),
        "wpd_product": str(product.pk),
    }
    assert params["metadata"] == metadata
    assert params["payment_intent_data"] == {"metadata": metadata}
    assert params["client_reference_id"] == str(purchase.public_id)
    assert (
        params["success_url"] == "http://testserver/shop/thanks/?session_id={CHECKOUT_SESSION_ID}"
    )
    assert params["cancel_url"] == product.get_full_url() == f"http://testserver{product.url}"
    assert "customer_email" not in params
    assert call.idempotency_key == f"wpd-checkout-{purchase.public_id}"

    assert purchase.status == Purchase.Status.PENDING
    assert (purchase.product_id, purchase.product_title) == (product.pk, "Field guide")
    assert (purchase.amount, purchase.currency, purchase.user) == (1250, "USD", None)


def test_checkout_sets_a_signed_http_only_lax_binding_cookie_for_the_app_urls_only(
    client, product, fake_stripe
):
    response = buy(client, product)

    cookie = response.cookies[binding.COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # plain http in tests; Secure on https (next test)
    assert cookie["path"] == "/shop/"
    purchase = Purchase.objects.get()
    data = signing.loads(cookie.value, salt=binding.SALT)
    assert data == {"purchases": [str(purchase.public_id)]}


def test_binding_cookie_is_secure_on_https(client, product, fake_stripe):
    response = buy(client, product, HTTP_ORIGIN="https://testserver", secure=True)
    assert response.status_code == 303
    assert response.cookies[binding.COOKIE_NAME]["secure"] is True


def test_success_and_cancel_urls_come_from_the_site_even_with_a_forged_host(
    client, product, fake_stripe
):
    # A non-browser client can send any Host (and a matching Origin); the URLs Stripe sends the
    # buyer back to must still be the site's own.
    response = buy(client, product, HTTP_HOST="evil.example", HTTP_ORIGIN="http://evil.example")

    assert response.status_code == 303
    [call] = session_calls(fake_stripe)
    assert call.params["success_url"].startswith("http://testserver/shop/thanks/")
    assert call.params["cancel_url"].startswith("http://testserver/")


def test_signed_in_buyer_gets_email_prefilled_and_linked(client, product, fake_stripe):
    user = UserFactory(email="reader@example.com")
    client.force_login(user)

    assert buy(client, product).status_code == 303

    [call] = session_calls(fake_stripe)
    assert call.params["customer_email"] == "reader@example.com"
    assert Purchase.objects.get().user == user


def test_stripe_price_id_is_used_when_it_matches_the_page(client, home, fake_stripe):
    price = fake_stripe.add_price(1250, "usd")
    product = ProductPageFactory(parent=home, stripe_price_id=price["id"])

    assert buy(client, product).status_code == 303

    [call] = session_calls(fake_stripe)
    assert call.params["line_items"] == [{"price": price["id"], "quantity": "1"}]


def test_double_click_reuses_the_open_purchase_and_session(client, product, fake_stripe):
    first = buy(client, product)
    second = buy(client, product)

    assert first.status_code == second.status_code == 303
    assert first["Location"] == second["Location"]
    assert Purchase.objects.count() == 1
    assert len(fake_stripe.sessions) == 1
    keys = {call.idempotency_key for call in session_calls(fake_stripe)}
    assert keys == {f"wpd-checkout-{Purchase.objects.get().public_id}"}


def test_another_browser_gets_its_own_purchase(client, product, fake_stripe):
    other_browser = Client()
    buy(client, product)
    buy(other_browser, product)

    assert Purchase.objects.count() == 2
    assert len(fake_stripe.sessions) == 2


def test_a_new_price_after_the_first_click_starts_a_new_purchase(client, product, fake_stripe):
    buy(client, product)
    product.price_amount = 1500
    product.save_revision().publish()

    assert buy(client, product).status_code == 303

    assert sorted(Purchase.objects.values_list("amount", flat=True)) == [1250, 1500]
    # Both stay bound to this browser, newest first.
    ids = binding.bound_purchase_ids(_request_with_cookies(client))
    assert len(ids) == 2


def _request_with_cookies(client):
    request = RequestFactory().get("/")
    request.COOKIES = {k: v.value for k, v in client.cookies.items()}
    return request


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_ORIGIN": "https://evil.example"},
        {"HTTP_ORIGIN": "http://testserver.evil.example"},
        {"HTTP_ORIGIN": "null"},
        {"HTTP_ORIGIN": None, "HTTP_REFERER": "https://evil.example/shop/"},
        {"HTTP_ORIGIN": None},
    ],
    ids=["foreign-origin", "lookalike-origin", "null-origin", "foreign-referer", "no-origin"],
)
def test_checkout_from_another_origin_is_forbidden(client, product, fake_stripe, headers):
    headers = {k: v for k, v in headers.items() if v is not None}
    if "HTTP_ORIGIN" not in headers:
        response = client.post(checkout_url(product), **headers)
    else:
        response = buy(client, product, **headers)

    assert response.status_code == 403
    assert not Purchase.objects.exists()
    assert fake_stripe.requests == []


def test_referer_from_the_site_is_accepted_when_origin_is_absent(client, product, fake_stripe):
    response = client.post(checkout_url(product), HTTP_REFERER=f"http://testserver{product.url}")
    assert response.status_code == 303


def test_trusted_origins_are_accepted(client, product, fake_stripe, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.com"]
    response = buy(client, product, HTTP_ORIGIN="https://www.example.com")
    assert response.status_code == 303


def test_checkout_accepts_post_only(client, product, fake_stripe):
    assert client.get(checkout_url(product), HTTP_ORIGIN=ORIGIN).status_code == 405


def test_unpublished_product_cannot_be_bought(client, product, fake_stripe):
    product.unpublish()

    assert buy(client, product).status_code == 404
    assert not Purchase.objects.exists()
    assert fake_stripe.requests == []


def test_a_page_that_is_not_a_product_cannot_be_bought(client, home, fake_stripe):
    assert buy(client, home).status_code == 404
    assert client.post("/shop/checkout/999999/", HTTP_ORIGIN=ORIGIN).status_code == 404


def test_product_without_files_is_refused_with_copy(client, home, fake_stripe):
    product = ProductPageFactory(parent=home, title="Empty box", files=0)

    response = buy(client, product)

    assert response.status_code == 409
    assert "Checkout is unavailable right now" in response.content.decode()
    assert not Purchase.objects.exists()
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    "price_kwargs",
    [
        {"unit_amount": 999, "currency": "usd"},
        {"unit_amount": 1250, "currency": "eur"},
        {"unit_amount": 1250, "currency": "usd", "active": False},
    ],
    ids=["amount", "currency", "archived"],
)
def test_stripe_price_that_does_not_match_refuses_checkout(
    client, home, fake_stripe, caplog, price_kwargs
):
    price = fake_stripe.add_price(**price_kwargs)
    product = ProductPageFactory(parent=home, title="Atlas", stripe_price_id=price["id"])

    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"):
        response = buy(client, product)

    assert response.status_code == 503
    html = response.content.decode()
    assert "Checkout is unavailable right now" in html
    assert "We could not start the payment for Atlas" in html
    assert not Purchase.objects.exists()
    assert session_calls(fake_stripe) == []
    assert any(price["id"] in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_unknown_stripe_price_refuses_checkout(client, home, fake_stripe, caplog):
    product = ProductPageFactory(parent=home, stripe_price_id="price_gone")

    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"):
        response = buy(client, product)

    assert response.status_code == 503
    assert not Purchase.objects.exists()
    assert "price_gone" in caplog.text


@pytest.mark.parametrize("mode", ["connection", "500"])
def test_stripe_down_shows_copy_and_leaves_no_pending_purchase(
    client, product, fake_stripe, caplog, mode
):
    fake_stripe.set_down(True, mode=mode)

    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"):
        response = buy(client, product)

    assert response.status_code == 503
    assert "Checkout is unavailable right now" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert binding.COOKIE_NAME not in response.cookies
    assert not Purchase.objects.filter(status=Purchase.Status.PENDING).exists()
    purchase = Purchase.objects.get()
    assert purchase.status == Purchase.Status.FAILED
    assert purchase.failed_at is not None
    assert "could not be created" in purchase.status_reason
    assert purchase.stripe_checkout_session_id is None
    assert "Checkout for product Field guide" in caplog.text


def test_stripe_down_on_a_second_click_leaves_the_first_purchase_alone(
    client, product, fake_stripe
):
    buy(client, product)
    fake_stripe.set_down(True)

    assert buy(client, product).status_code == 503

    statuses = sorted(Purchase.objects.values_list("status", flat=True))
    assert statuses == [Purchase.Status.FAILED, Purchase.Status.PENDING]


def test_product_page_shows_an_accessible_buy_button_without_per_visitor_data(client, product):
    response = client.get(product.url)
    html = response.content.decode()

    assert f'action="{checkout_url(product)}"' in html
    assert 'method="post"' in html
    assert '<button class="pd-button" type="submit"' in html
    assert "Buy now for $12.50" in html
    assert "wagtail_paid_delivery/checkout.js" in html
    # Cacheable: no CSRF token, no cookie set by the page.
    assert "csrfmiddlewaretoken" not in html
    assert "csrftoken" not in response.cookies


def test_product_page_without_files_has_no_buy_button(client, home):
    product = ProductPageFactory(parent=home, files=0)
    html = client.get(product.url).content.decode()
    assert "Buy now" not in html
    assert "not for sale right now" in html


# Deleting and unpublishing sold products ------------------------------------------------------


def delete_url(page) -> str:
    return reverse("wagtailadmin_pages:delete", args=[page.pk])


def admin_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_deleting_a_product_with_paid_purchases_is_refused_with_a_message(admin_client, product):
    PurchaseFactory(product=product, paid=True)

    get = admin_client.get(delete_url(product), follow=True)
    post = admin_client.post(delete_url(product), follow=True)

    assert get.redirect_chain[0] == (reverse("wagtailadmin_pages:edit", args=[product.pk]), 302)
    assert post.status_code == 200
    assert len(admin_messages(get)) == 1
    [message] = admin_messages(post)
    assert "“Field guide” cannot be deleted" in message
    assert "Unpublish" in message
    assert ProductPage.objects.filter(pk=product.pk).exists()


def test_deleting_a_parent_of_a_sold_product_is_refused(admin_client, home):
    section = HomePage(title="Section", slug="section")
    home.add_child(instance=section)
    product = ProductPageFactory(parent=section, title="Nested")
    PurchaseFactory(product=product, paid=True)

    response = admin_client.post(delete_url(section), follow=True)

    assert "“Nested” cannot be deleted" in admin_messages(response)[0]
    assert ProductPage.objects.filter(pk=product.pk).exists()


def test_a_product_with_only_pending_or_failed_purchases_can_be_deleted(admin_client, product):
    pending = PurchaseFactory(product=product)
    failed = PurchaseFactory(product=product, status=Purchase.Status.FAILED)

    response = admin_client.post(delete_url(product))

    assert response.status_code == 302
    assert not ProductPage.objects.filter(pk=product.pk).exists()
    pending.refresh_from_db()
    failed.refresh_from_db()
    assert pending.product is None and pending.product_title == "Field guide"
    assert failed.product is None


def test_bulk_deleting_a_sold_product_is_refused(admin_client, home, product):
    unsold = ProductPageFactory(parent=home, title="Unsold")
    PurchaseFactory(product=product, paid=True)
    url = (
        reverse("wagtail_bulk_action", args=["wagtailcore", "page", "delete"])
        + f"?id={product.pk}&id={unsold.pk}&next=/admin/"
    )

    response = admin_client.post(url, follow=True)

    assert response.status_code == 200
    assert "“Field guide” cannot be deleted" in admin_messages(response)[0]
    assert ProductPage.objects.filter(pk__in=[product.pk, unsold.pk]).count() == 2


def test_unpublishing_stops_sales_but_buyers_keep_their_purchase(
    admin_client, client, product, fake_stripe
):
    purchase = PurchaseFactory(product=product, paid=True)

    response = admin_client.post(reverse("wagtailadmin_pages:unpublish", args=[product.pk]))

    assert response.status_code == 302
    assert buy(client, product).status_code == 404
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert purchase.product_id == product.pk


# The Stripe Price id is checked when an editor publishes --------------------------------------


def publish_with_price_id(admin_client, home, price_id, **fields):
    from tests.test_product_admin import add_url, product_data, two_files

    return admin_client.post(
        add_url(home), product_data(two_files(), stripe_price_id=price_id, **fields)
    )


def price_id_errors(response) -> list[str]:
    assert response.status_code == 200, response.status_code
    return [str(e) for e in response.context["form"].errors.get("stripe_price_id", [])]


def test_publishing_with_a_matching_stripe_price_succeeds(admin_client, home, fake_stripe):
    price = fake_stripe.add_price(1250, "usd")

    response = publish_with_price_id(admin_client, home, price["id"])

    assert response.status_code == 302
    assert ProductPage.objects.get().stripe_price_id == price["id"]
    assert fake_stripe.calls("get", f"/v1/prices/{price['id']}")


def test_publishing_with_a_mismatched_stripe_price_is_a_form_error(admin_client, home, fake_stripe):
    price = fake_stripe.add_price(999, "usd")

    response = publish_with_price_id(admin_client, home, price["id"])

    assert price_id_errors(response) == [
        "This Stripe Price charges $9.99, but this page says $12.50. Change the price above, "
        "or use a Price that matches it."
    ]
    assert not ProductPage.objects.exists()


def test_publishing_with_a_price_in_another_currency_is_a_form_error(
    admin_client, home, fake_stripe
):
    price = fake_stripe.add_price(1250, "eur")
    response = publish_with_price_id(admin_client, home, price["id"])
    assert "charges €12.50, but this page says $12.50" in price_id_errors(response)[0]


def test_publishing_with_an_unknown_stripe_price_is_a_form_error(admin_client, home, fake_stripe):
    response = publish_with_price_id(admin_client, home, "price_unknown")
    assert price_id_errors(response) == [
        "Stripe has no Price with this id (in this account and mode)."
    ]


def test_publishing_while_stripe_is_down_is_a_readable_form_error(admin_client, home, fake_stripe):
    fake_stripe.set_down(True)
    response = publish_with_price_id(admin_client, home, "price_whatever")
    assert "Stripe could not be reached to check this Price id" in price_id_errors(response)[0]


def test_saving_a_draft_does_not_check_the_stripe_price(admin_client, home, fake_stripe):
    from tests.test_product_admin import add_url, product_data

    data = product_data(stripe_price_id="price_unknown", publish=False)
    response = admin_client.post(add_url(home), data)

    assert response.status_code == 302
    assert fake_stripe.requests == []


# A key Stripe rejects ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk_test_revoked", "pk_test_publishable"])
def test_checkout_with_a_rejected_key_shows_copy_and_keeps_no_purchase(
    client, product, fake_stripe, caplog, key
):
    fake_stripe.rejected_keys.add("sk_test_revoked")
    with (
        override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_SECRET_KEY": key}),
        caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"),
    ):
        response = buy(client, product)
        # Clicking again (a buyer who tries twice) piles nothing up either.
        assert buy(client, product).status_code == 503

    assert response.status_code == 503
    assert "Checkout is unavailable right now" in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert binding.COOKIE_NAME not in response.cookies
    assert not Purchase.objects.exists()
    # Stripe was asked (and said 401), once per click: stripe-python does not retry a 401.
    assert len(session_calls(fake_stripe)) == 2
    [first, _] = [r for r in caplog.records if r.name == "wagtail_paid_delivery.checkout"]
    message = first.getMessage()
    assert "Stripe REJECTED the secret key (WAGTAIL_PAID_DELIVERY['STRIPE_SECRET_KEY'])" in message
    assert "Invalid API Key provided" in message
    assert "Field guide" in message
    assert key not in caplog.text  # Stripe redacts it; so do we
    assert first.exc_info is None  # a configuration mistake, not a bug: no traceback


def test_checkout_with_a_rejected_key_and_a_stripe_price_says_the_key_was_rejected(
    client, home, fake_stripe, caplog
):
    price = fake_stripe.add_price(1250, "usd")
    product = ProductPageFactory(parent=home, title="Atlas", stripe_price_id=price["id"])
    fake_stripe.rejected_keys.add("sk_test_tests")

    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"):
        response = buy(client, product)

    assert response.status_code == 503
    assert not Purchase.objects.exists()
    assert session_calls(fake_stripe) == []
    assert "Stripe REJECTED the secret key" in caplog.text
    assert "cannot be sold" not in caplog.text


def test_checkout_refused_by_stripe_for_another_reason_keeps_no_purchase(
    client, product, fake_stripe, caplog, monkeypatch
):
    # A 400 (say, a Checkout option the Stripe account has not enabled): nothing was created.
    monkeypatch.setattr(
        fake_stripe,
        "_route",
        lambda *args: fake_stripe._error(400, "invalid_request_error", "Tax is not enabled."),
    )
    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery"):
        response = buy(client, product)
    assert response.status_code == 503
    assert not Purchase.objects.exists()
    assert "refused, no purchase kept: " in caplog.text
    assert "Tax is not enabled." in caplog.text


def test_publishing_with_a_rejected_key_is_a_form_error_about_the_key(
    admin_client, home, fake_stripe
):
    fake_stripe.rejected_keys.add("sk_test_tests")
    response = publish_with_price_id(admin_client, home, "price_whatever")
    assert "Stripe rejected this site's secret key" in price_id_errors(response)[0]
