"""The success page (thanks/?session_id=): the buyer's browser learns the status, no one else.

Decision: a browser without the binding cookie (a stranger, a forwarded link, a guessed id) always
reads the neutral "check your email" copy with status 200, and its visit does not call Stripe or
fulfill anything; the webhook (or the buyer's own browser) does that.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail, signing
from django.core.cache import cache
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.factories import DeliveryCopyFactory, ProductPageFactory, PurchaseFactory
from tests.stripe_fake import event_for, post_event
from wagtail_paid_delivery import binding, links, signals
from wagtail_paid_delivery.models import DownloadLink, Purchase

ORIGIN = "http://testserver"
SUCCESS = "Thank you for your purchase"
PENDING = "Your payment is processing"
FAILED = "The payment did not go through"
NEUTRAL = "Check your email"

needs_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="parallel requests are proven on PostgreSQL (DATABASE_URL=postgres://...); SQLite "
    "serialises writers instead",
)


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
    # The same bytes, but for the CSP nonce each response draws at random.
    bodies = {re.sub(rb'nonce="[^"]*"', b"", r.content) for r in (known, unknown, missing)}
    assert len(bodies) == 1
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
    match = re.search(r'href="(http://testserver/shop/d/[A-Za-z0-9_-]{43}/)"', html)
    assert match, "no download link on the success page"
    return match.group(1)


def _token(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def success_links(purchase):
    return DownloadLink.objects.filter(purchase=purchase, reason="success_page")


@pytest.fixture
def paid_in_browser(client, product, fake_stripe):
    """A purchase started by ``client`` (which holds its binding cookie) and paid at Stripe."""
    purchase = start_checkout(client, product)
    fake_stripe.pay(purchase.stripe_checkout_session_id, email="ada@example.com")
    return purchase


def test_success_page_links_to_the_download_page_and_reloads_mint_no_new_links(
    client, paid_in_browser
):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id

    first = thanks(client, session_id)
    url = _download_href(first.content.decode())
    assert success_links(purchase).count() == 1
    # No token travels in a cookie (the page sets none), and none is stored: only its hash.
    assert binding.COOKIE_NAME not in first.cookies
    token = _token(url)
    assert links.TOKEN_RE.match(token)
    assert success_links(purchase).get().token_hash == links.hash_token(token)
    assert not DownloadLink.objects.filter(token_hash=token).exists()

    for _ in range(5):
        assert _download_href(thanks(client, session_id).content.decode()) == url
    assert success_links(purchase).count() == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1

    page = client.get(url.replace("http://testserver", ""))
    assert page.status_code == 200
    assert "Field guide" in page.content.decode()


def test_a_replayed_cookie_and_a_copied_cookie_show_the_same_link(client, paid_in_browser):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id
    # The cookie exactly as the checkout left it, before the success page was ever seen.
    cookie_before = client.cookies[binding.COOKIE_NAME].value
    url = _download_href(thanks(client, session_id).content.decode())

    client.cookies[binding.COOKIE_NAME] = cookie_before
    assert _download_href(thanks(client, session_id).content.decode()) == url
    other_tab = Client()
    other_tab.cookies[binding.COOKIE_NAME] = cookie_before
    assert _download_href(thanks(other_tab, session_id).content.decode()) == url
    assert success_links(purchase).count() == 1


def test_a_cookie_from_an_earlier_build_with_a_raw_token_in_it_changes_nothing(
    client, product, paid_in_browser, fake_stripe
):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id
    url = _download_href(thanks(client, session_id).content.decode())
    # Earlier builds kept the success page's raw token in the cookie; one that names another
    # (real) link must neither be shown nor make a new one.
    other = links.issue_link(PurchaseFactory(product=product, paid=True), reason="webhook")
    old = {"purchases": [str(purchase.public_id)], "links": {str(purchase.public_id): other.token}}
    client.cookies[binding.COOKIE_NAME] = signing.dumps(old, salt=binding.SALT, compress=True)

    html = thanks(client, session_id).content.decode()
    assert _download_href(html) == url
    assert other.token not in html
    assert success_links(purchase).count() == 1
    # The next checkout rewrites the cookie without the raw token.
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]), HTTP_ORIGIN=ORIGIN
    )
    data = signing.loads(response.cookies[binding.COOKIE_NAME].value, salt=binding.SALT)
    assert "links" not in data
    assert other.token not in response.cookies[binding.COOKIE_NAME].value


def test_a_revoked_success_link_is_not_replaced_by_the_success_page(client, paid_in_browser):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id
    old = _download_href(thanks(client, session_id).content.decode())
    links.revoke_link(links.check_token(_token(old)))

    html = thanks(client, session_id).content.decode()
    assert SUCCESS in html  # the copy still says it is paid and where the email went
    assert "/shop/d/" not in html
    assert "ada@example.com" in html
    assert success_links(purchase).count() == 1
    # Fresh links come by email: the resend form.
    cache.clear()  # resend's rate limit counts in the cache
    response = client.post(reverse("wagtail_paid_delivery:resend"), {"email": "ada@example.com"})
    assert response.status_code == 200
    [message] = mail.outbox
    [path] = re.findall(r"http://testserver(/shop/d/[A-Za-z0-9_-]{43}/)", message.body)
    assert client.get(path).status_code == 200
    assert success_links(purchase).count() == 1


def test_an_expired_success_link_is_not_replaced_by_the_success_page(
    client, paid_in_browser, settings
):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id
    _download_href(thanks(client, session_id).content.decode())
    success_links(purchase).update(expires_at=timezone.now() - timedelta(seconds=1))

    html = thanks(client, session_id).content.decode()
    assert SUCCESS in html
    assert "/shop/d/" not in html
    assert success_links(purchase).count() == 1


def test_the_success_link_survives_a_secret_key_rotation(client, paid_in_browser, settings):
    purchase = paid_in_browser
    session_id = purchase.stripe_checkout_session_id
    url = _download_href(thanks(client, session_id).content.decode())

    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "rotated-" + old_key
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert _download_href(thanks(client, session_id).content.decode()) == url
    assert success_links(purchase).count() == 1

    # With the old key gone from the fallbacks its link cannot be shown again: the page makes
    # one under the current key (once: reloads reuse it). At most one link per secret.
    settings.SECRET_KEY_FALLBACKS = []
    data = {"purchases": [str(purchase.public_id)]}
    client.cookies[binding.COOKIE_NAME] = signing.dumps(data, salt=binding.SALT, compress=True)
    rotated = _download_href(thanks(client, session_id).content.decode())
    assert rotated != url
    assert _download_href(thanks(client, session_id).content.decode()) == rotated
    assert success_links(purchase).count() == 2


def test_one_purchases_success_token_opens_only_its_own_download_page(client, product):
    first, second = (PurchaseFactory(product=product, paid=True) for _ in range(2))
    a, b = links.success_page_link(first), links.success_page_link(second)
    assert a is not None and b is not None
    assert a.token != b.token
    assert links.check_token(a.token).purchase == first
    assert links.check_token(b.token).purchase == second
    # Derived from the secret: another SECRET_KEY gives another token for the same purchase.
    with override_settings(SECRET_KEY="another secret key, 50 characters long........"):
        assert links.success_page_tokens(first)[0] != a.token


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_success_pages_make_one_link_on_postgres(home, fake_stripe):
    product = ProductPageFactory(parent=home, title="Field guide", price_amount=1250)
    buyer = Client()
    purchase = start_checkout(buyer, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")  # no webhook: every request settles it
    cookie = buyer.cookies[binding.COOKIE_NAME].value

    def load():
        tab = Client()
        tab.cookies[binding.COOKIE_NAME] = cookie
        return thanks(tab, session_id).content.decode()

    pages = run_at_once([load] * 8)

    assert {_download_href(html) for html in pages} == {_download_href(pages[0])}
    assert success_links(purchase).count() == 1
    # Besides it only the delivery email's link (this test commits, so the email is sent).
    others = DownloadLink.objects.filter(purchase=purchase).exclude(reason="success_page")
    assert others.count() == 1
    assert len(mail.outbox) == 1
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID


def test_a_stranger_gets_no_download_link(client, product, fake_stripe):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id)
    thanks(client, session_id)  # the buyer's browser

    stranger = Client()
    html = thanks(stranger, session_id).content.decode()
    assert "/shop/d/" not in html
    assert NEUTRAL in html
