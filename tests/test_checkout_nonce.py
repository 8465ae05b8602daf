"""One click, one checkout: the Buy form's nonce (checkout.js) makes every POST of one click start
the same purchase and Checkout Session, even before any cookie exists; a nonce from anywhere
else starts nothing of the first buyer's. Through POST checkout/<page id>/ with Django's client.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import stripe
from django.core import signing
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, UserFactory
from wagtail_paid_delivery import binding, checkout
from wagtail_paid_delivery.models import Purchase

ORIGIN = "http://testserver"

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="parallel requests are proven on PostgreSQL (DATABASE_URL=postgres://...); SQLite "
    "serialises writers instead",
)


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250, currency="USD")


def new_nonce() -> str:
    return secrets.token_hex(16)  # what checkout.js makes: 32 lowercase hex digits


def buy(client, page, nonce=None, **extra):
    data = {} if nonce is None else {"checkout_nonce": nonce}
    extra.setdefault("HTTP_ORIGIN", ORIGIN)
    return client.post(reverse("wagtail_paid_delivery:checkout", args=[page.pk]), data, **extra)


def session_creates(fake_stripe):
    return fake_stripe.calls("post", "/v1/checkout/sessions")


def bound_ids(response) -> list[str]:
    cookie = response.cookies[binding.COOKIE_NAME].value
    return signing.loads(cookie, salt=binding.SALT)["purchases"]


def test_two_posts_of_one_click_without_cookies_start_one_checkout(product, fake_stripe):
    nonce = new_nonce()
    first = buy(Client(), product, nonce)
    second = buy(Client(), product, nonce)  # no cookie: the first answer never reached it

    assert first.status_code == second.status_code == 303
    assert first["Location"] == second["Location"]
    purchase = Purchase.objects.get()
    assert len(fake_stripe.sessions) == 1
    assert purchase.stripe_checkout_session_id in fake_stripe.sessions
    # Both bind the one purchase, so the success page knows the buyer whichever answer the
    # browser kept.
    assert bound_ids(first) == bound_ids(second) == [str(purchase.public_id)]
    # Stored and sent to Stripe hashed: the nonce itself is kept nowhere.
    assert purchase.checkout_nonce and nonce not in purchase.checkout_nonce
    keys = {call.idempotency_key for call in session_creates(fake_stripe)}
    assert keys == {f"wpd-checkout-{product.pk}-{purchase.checkout_nonce}"}
    assert all(nonce not in repr(call) for call in fake_stripe.requests)


def test_without_a_nonce_the_cookie_still_recognises_a_second_click(client, product, fake_stripe):
    first = buy(client, product)
    second = buy(client, product)
    assert first["Location"] == second["Location"]
    assert Purchase.objects.count() == 1
    assert Purchase.objects.get().checkout_nonce is None


def test_without_a_nonce_and_without_a_cookie_each_post_is_a_checkout(product, fake_stripe):
    # What the nonce fixes: a browser without script, before any cookie exists.
    buy(Client(), product)
    buy(Client(), product)
    assert Purchase.objects.count() == 2
    assert len(fake_stripe.sessions) == 2


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_eight_parallel_posts_of_one_click_start_one_checkout_on_postgres(home, fake_stripe):
    product = ProductPageFactory(parent=home, price_amount=1250)
    for round_ in range(3):  # the race lands differently each time
        nonce = new_nonce()

        responses = run_at_once([lambda nonce=nonce: buy(Client(), product, nonce)] * 8)

        assert [r.status_code for r in responses] == [303] * 8
        assert len({r["Location"] for r in responses}) == 1
        purchase = Purchase.objects.latest("created_at")
        assert Purchase.objects.count() == round_ + 1
        assert purchase.status == Purchase.Status.PENDING
        assert len(fake_stripe.sessions) == round_ + 1
        assert {bound_ids(r)[0] for r in responses} == {str(purchase.public_id)}
    keys = {call.idempotency_key for call in session_creates(fake_stripe)}
    assert keys == {checkout.idempotency_key(p) for p in Purchase.objects.all()}


@pytest.mark.parametrize(
    "nonce",
    [
        "",
        "0" * 31,
        "0" * 33,
        "A" * 32,
        "g" * 32,
        "０" * 32,  # full-width digits
        "0" * 31 + "\n",
        " " + "0" * 31,
        "0" * 32 + "\x00",
        "0" * 4096,
        "../" + "0" * 29,
    ],
    ids=repr,
)
def test_a_malformed_nonce_is_ignored(product, fake_stripe, nonce):
    first = buy(Client(), product, nonce)
    second = buy(Client(), product, nonce)

    assert first.status_code == second.status_code == 303
    assert first["Location"] != second["Location"]
    assert Purchase.objects.count() == 2
    assert not Purchase.objects.exclude(checkout_nonce=None).exists()


def test_a_nonce_sent_twice_in_one_body_or_in_the_query_string_is_ignored(product, fake_stripe):
    nonce = new_nonce()
    url = reverse("wagtail_paid_delivery:checkout", args=[product.pk])
    body = f"checkout_nonce={nonce}&checkout_nonce={nonce}"
    for _ in range(2):
        Client().post(
            url, body, content_type="application/x-www-form-urlencoded", HTTP_ORIGIN=ORIGIN
        )
        Client().post(f"{url}?checkout_nonce={nonce}", HTTP_ORIGIN=ORIGIN)
    assert Purchase.objects.count() == 4
    assert not Purchase.objects.exclude(checkout_nonce=None).exists()


def test_a_nonce_replayed_from_another_browser_starts_that_browsers_own_checkout(
    product, home, fake_stripe
):
    # The buyer's browser has a binding cookie (an earlier purchase), so their nonce is scoped
    # by that cookie, which no one else can send.
    buyer = Client()
    buy(buyer, ProductPageFactory(parent=home, title="Star atlas"))
    nonce = new_nonce()
    theirs = buy(buyer, product, nonce)
    purchase = Purchase.objects.get(product=product)

    # A stranger on the same network without a cookie, then one with a cookie of their own.
    replay = buy(Client(), product, nonce)
    stranger = Client()
    buy(stranger, ProductPageFactory(parent=home, title="Moth atlas"))
    replay_with_cookie = buy(stranger, product, nonce)

    for response in (replay, replay_with_cookie):
        assert response.status_code == 303
        assert response["Location"] != theirs["Location"]
        assert str(purchase.public_id) not in bound_ids(response)
    assert Purchase.objects.filter(product=product).count() == 3


def test_a_nonce_replayed_from_another_network_starts_its_own_checkout(product, fake_stripe):
    nonce = new_nonce()
    theirs = buy(Client(), product, nonce, REMOTE_ADDR="198.51.100.7")
    replay = buy(Client(), product, nonce, REMOTE_ADDR="203.0.113.9")
    same_network = buy(Client(), product, nonce, REMOTE_ADDR="198.51.100.200")

    assert replay["Location"] != theirs["Location"]
    assert same_network["Location"] == theirs["Location"]  # one /24: the same click, retried
    assert Purchase.objects.count() == 2


def test_a_nonce_replayed_by_another_account_never_sees_the_buyers_session(product, fake_stripe):
    buyer = Client()
    buyer.force_login(UserFactory(email="reader@example.com"))
    nonce = new_nonce()
    theirs = buy(buyer, product, nonce)

    replay = buy(Client(), product, nonce)  # same network, no cookie, not signed in

    assert replay.status_code == 303
    assert replay["Location"] != theirs["Location"]
    [_, call] = session_creates(fake_stripe)
    assert "customer_email" not in call.params
    mine = Purchase.objects.get(user=None)
    assert bound_ids(replay) == [str(mine.public_id)]


def test_the_same_nonce_on_another_product_is_another_checkout(product, home, fake_stripe):
    nonce = new_nonce()
    other = ProductPageFactory(parent=home, title="Star atlas")
    buy(Client(), product, nonce)
    buy(Client(), other, nonce)
    assert Purchase.objects.count() == 2
    assert len(fake_stripe.sessions) == 2


def test_a_nonce_whose_checkout_failed_starts_afresh_when_stripe_is_back(product, fake_stripe):
    nonce = new_nonce()
    fake_stripe.set_down(True)
    assert buy(Client(), product, nonce).status_code == 503
    fake_stripe.set_down(False)

    retry = buy(Client(), product, nonce)

    assert retry.status_code == 303
    statuses = sorted(Purchase.objects.values_list("status", flat=True))
    assert statuses == [Purchase.Status.FAILED, Purchase.Status.PENDING]
    assert len(fake_stripe.sessions) == 1


def test_a_second_post_while_stripe_is_down_leaves_the_first_checkout_alone(product, fake_stripe):
    nonce = new_nonce()
    first = buy(Client(), product, nonce)
    fake_stripe.set_down(True)

    second = buy(Client(), product, nonce)

    assert second.status_code == 503
    purchase = Purchase.objects.get()  # no second purchase, and the first is still payable
    assert purchase.status == Purchase.Status.PENDING
    fake_stripe.set_down(False)
    assert buy(Client(), product, nonce)["Location"] == first["Location"]


def test_a_nonce_older_than_the_window_starts_a_new_checkout(product, fake_stripe):
    nonce = new_nonce()
    first = buy(Client(), product, nonce)
    too_old = timezone.now() - checkout.NONCE_WINDOW - timedelta(seconds=1)
    Purchase.objects.update(created_at=too_old)

    later = buy(Client(), product, nonce)

    assert later["Location"] != first["Location"]
    assert Purchase.objects.count() == 2


def test_a_new_price_between_the_posts_starts_a_new_checkout(product, fake_stripe):
    nonce = new_nonce()
    first = buy(Client(), product, nonce)
    product.price_amount = 1500
    product.save_revision().publish()

    second = buy(Client(), product, nonce)

    assert second["Location"] != first["Location"]
    assert sorted(Purchase.objects.values_list("amount", flat=True)) == [1250, 1500]


def test_product_page_has_an_empty_nonce_field_the_same_for_every_visitor(product):
    pages = [Client().get(product.url).content.decode() for _ in range(2)]
    assert pages[0] == pages[1]
    assert '<input type="hidden" name="checkout_nonce" value="">' in pages[0]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_post_whose_stripe_call_failed_leaves_pending_the_purchase_its_twin_sent_to_stripe(
    home, fake_stripe, monkeypatch
):
    # The first POST creates the purchase, then its Stripe call hangs and fails; meanwhile the
    # second POST of the click joins it and gets the session. The buyer is sent to pay that
    # session, so the purchase must not be marked failed (a payment would then be refused).
    product = ProductPageFactory(parent=home, price_amount=1250)
    nonce = new_nonce()
    original = fake_stripe.request
    twin_done = threading.Event()
    failing = []  # the first POST's thread

    def request(method, url, headers, post_data=None, **kwargs):
        is_create = method == "post" and urlsplit(url).path == "/v1/checkout/sessions"
        if is_create and threading.get_ident() in failing:
            twin_done.wait(timeout=30)
            raise stripe.APIConnectionError("connection reset", should_retry=False)
        return original(method, url, headers, post_data, **kwargs)

    monkeypatch.setattr(fake_stripe, "request", request)
    answers = {}

    def first():
        failing.append(threading.get_ident())
        try:
            answers["first"] = buy(Client(), product, nonce)
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=first)
    thread.start()
    try:
        for _ in range(300):
            if Purchase.objects.exists():
                break
            time.sleep(0.01)
        answers["second"] = buy(Client(), product, nonce)
    finally:
        twin_done.set()
        thread.join()

    assert answers["second"].status_code == 303
    assert answers["first"].status_code == 503
    purchase = Purchase.objects.get()
    assert purchase.status == Purchase.Status.PENDING
    assert (
        answers["second"]["Location"]
        == fake_stripe.session(purchase.stripe_checkout_session_id)["url"]
    )
