"""The success page (thanks/?session_id=): the buyer's browser learns the status, no one else.

Decision: a browser without the binding cookie (a stranger, a forwarded link, a guessed id) always
reads the neutral "check your email" copy with status 200, and its visit does not call Stripe or
fulfill anything; the webhook (or the buyer's own browser) does that.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import DeliveryCopyFactory, ProductPageFactory, PurchaseFactory
from tests.stripe_fake import event_for, post_event
from wagtail_paid_delivery import binding, signals
from wagtail_paid_delivery.models import Purchase

ORIGIN = "http://testserver"
SUCCESS = "Thank you for your purchase"
PENDING = "Your payment is processing"
FAILED = "The payment did not go through"
NEUTRAL = "Check your email"


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


@pytest.fixture
def paid_signals():
    received = []

    def receiver(sender, purchase, **kwargs):
        received.append(purchase.pk)

    signals.purchase_paid.connect(receiver)
    yield received
    signals.purchase_paid.disconnect(receiver)


def start_checkout(client, product) -> Purchase:
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 303
    return Purchase.objects.get(pk=Purchase.objects.latest("created_at").pk)


def thanks(client, session_id):
    return client.get(reverse("wagtail_paid_delivery:success"), {"session_id": session_id})


def session_gets(fake_stripe, session_id):
    return fake_stripe.calls("get", f"/v1/checkout/sessions/{session_id}")


def test_buyer_sees_success_copy_after_the_webhook(
    client, product, fake_stripe, paid_signals, django_capture_on_commit_callbacks
):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    gets_before = len(session_gets(fake_stripe, session_id))

    response = thanks(client, session_id)

    assert response.status_code == 200
    html = response.content.decode()
    assert SUCCESS in html
    assert "Your payment for Field guide is confirmed" in html
    assert "ada@example.com" in html
    # Already paid: the page does not ask Stripe again.
    assert len(session_gets(fake_stripe, session_id)) == gets_before
    assert paid_signals == [purchase.pk]


def test_success_page_fulfills_when_the_webhook_is_late_and_a_reload_does_not_repeat_it(
    client, product, fake_stripe, paid_signals, django_capture_on_commit_callbacks
):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")  # paid at Stripe; no webhook yet

    with django_capture_on_commit_callbacks(execute=True):
        first = thanks(client, session_id)
        second = thanks(client, session_id)

    assert SUCCESS in first.content.decode()
    assert SUCCESS in second.content.decode()
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert purchase.email == "ada@example.com"
    assert paid_signals == [purchase.pk]
    assert len(session_gets(fake_stripe, session_id)) == 1

    # The late webhook then changes nothing either.
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    assert paid_signals == [purchase.pk]


def test_buyer_sees_pending_copy_while_the_payment_clears(client, product, fake_stripe):
    purchase = start_checkout(client, product)
    fake_stripe.pay(purchase.stripe_checkout_session_id, payment_status="unpaid")

    response = thanks(client, purchase.stripe_checkout_session_id)

    assert response.status_code == 200
    assert PENDING in response.content.decode()
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


def test_buyer_sees_pending_copy_not_an_error_when_stripe_is_down(client, product, fake_stripe):
    purchase = start_checkout(client, product)
    fake_stripe.pay(purchase.stripe_checkout_session_id)
    fake_stripe.set_down(True)

    response = thanks(client, purchase.stripe_checkout_session_id)

    assert response.status_code == 200
    assert PENDING in response.content.decode()


@pytest.mark.parametrize("status", [Purchase.Status.FAILED, Purchase.Status.EXPIRED])
def test_buyer_sees_failed_copy_with_a_way_back(client, product, fake_stripe, status):
    purchase = start_checkout(client, product)
    Purchase.objects.filter(pk=purchase.pk).update(status=status)

    response = thanks(client, purchase.stripe_checkout_session_id)

    html = response.content.decode()
    assert FAILED in html
    assert f'href="{product.url}"' in html
    assert session_gets(fake_stripe, purchase.stripe_checkout_session_id) == []


def test_a_stranger_sees_only_the_neutral_copy_and_triggers_nothing(
    client, product, fake_stripe, paid_signals
):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")
    stranger = Client()

    response = thanks(stranger, session_id)

    assert response.status_code == 200
    html = response.content.decode()
    assert NEUTRAL in html
    for leak in (SUCCESS, PENDING, FAILED, "Field guide", "ada@example.com"):
        assert leak not in html
    # No Stripe call, no fulfillment: the webhook will do it.
    assert session_gets(fake_stripe, session_id) == []
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING
    assert paid_signals == []


def test_a_stranger_cannot_tell_a_paid_purchase_from_an_unknown_session(client, product):
    paid = PurchaseFactory(product=product, paid=True)

    known = thanks(client, paid.stripe_checkout_session_id)
    unknown = thanks(client, "cs_test_nonexistent")
    missing = client.get(reverse("wagtail_paid_delivery:success"))

    assert known.status_code == unknown.status_code == missing.status_code == 200
    assert known.content == unknown.content == missing.content
    assert NEUTRAL in known.content.decode()


def test_a_forged_binding_cookie_is_ignored(client, product):
    paid = PurchaseFactory(product=product, paid=True)
    client.cookies[binding.COOKIE_NAME] = f'{{"purchases": ["{paid.public_id}"]}}'

    assert NEUTRAL in thanks(client, paid.stripe_checkout_session_id).content.decode()


def test_the_product_copy_is_used_and_placeholders_are_escaped(client, home, fake_stripe):
    copy = DeliveryCopyFactory(
        success_title="Enjoy {product}", success_message="Sent to {email}. {unknown} stays."
    )
    product = ProductPageFactory(parent=home, title="<b>Bold</b> guide", delivery_copy=copy)
    purchase = start_checkout(client, product)
    fake_stripe.pay(purchase.stripe_checkout_session_id, email="ada@example.com")

    html = thanks(client, purchase.stripe_checkout_session_id).content.decode()

    assert "<title>Enjoy &lt;b&gt;Bold&lt;/b&gt; guide</title>" in html
    assert "Sent to ada@example.com. {unknown} stays." in html
    assert "<b>Bold</b>" not in html


def test_success_page_headers_keep_it_private(client, product):
    purchase = PurchaseFactory(product=product, paid=True)
    for c in (client, Client()):
        response = thanks(c, purchase.stripe_checkout_session_id)
        assert response["Cache-Control"] == "private, no-store"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Robots-Tag"] == "noindex"


def _download_href(html: str) -> str:
    import re

    match = re.search(r'href="(http://testserver/shop/d/[A-Za-z0-9_-]{43}/)"', html)
    assert match, "no download link on the success page"
    return match.group(1)


def test_success_page_links_to_the_download_page_and_reloads_mint_no_new_links(
    client, product, fake_stripe
):
    from wagtail_paid_delivery.models import DownloadLink

    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")

    first = thanks(client, session_id)
    url = _download_href(first.content.decode())
    links = DownloadLink.objects.filter(purchase=purchase, reason="success_page")
    assert links.count() == 1
    # The raw token is only in the (signed, HttpOnly) binding cookie, never stored server-side.
    cookie = first.cookies[binding.COOKIE_NAME]
    assert cookie["httponly"]
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert not DownloadLink.objects.filter(token_hash=token).exists()

    second = thanks(client, session_id)
    assert _download_href(second.content.decode()) == url
    assert links.count() == 1

    page = client.get(url.replace("http://testserver", ""))
    assert page.status_code == 200
    assert "Field guide" in page.content.decode()


def test_success_page_gives_a_fresh_link_when_the_remembered_one_was_revoked(
    client, product, fake_stripe
):
    from wagtail_paid_delivery import links

    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id)
    old = _download_href(thanks(client, session_id).content.decode())
    links.revoke_link(links.check_token(old.rstrip("/").rsplit("/", 1)[1]))

    new = _download_href(thanks(client, session_id).content.decode())
    assert new != old
    assert client.get(new.replace("http://testserver", "")).status_code == 200


def test_a_stranger_gets_no_download_link(client, product, fake_stripe):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id)
    thanks(client, session_id)  # the buyer's browser

    stranger = Client()
    html = thanks(stranger, session_id).content.decode()
    assert "/shop/d/" not in html
    assert NEUTRAL in html
