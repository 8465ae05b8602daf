"""No promise the app does not keep: every purchase state has its own words, through the real URLs.

A purchase refunded, revoked by the shop or suspended during a dispute is told so on the success
page and on its links' pages, which offer fresh links only while it is paid; a resend asked from
a link's page answers exactly (nothing is sent for a purchase that gives no access), the
anonymous form answers every address alike and promises nothing; a failed bank debit sends the
buyer one email with a way to try again, however often Stripe tells us.
"""

from __future__ import annotations

import importlib
import re
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.core import mail
from django.core.cache import cache
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.stripe_fake import event_for, post_event
from wagtail_paid_delivery import fulfillment
from wagtail_paid_delivery.models import DeliveryCopy, DownloadLink, OutboundEmail, Purchase
from wagtail_paid_delivery.views import resend as resend_view

pytestmark = pytest.mark.django_db

ORIGIN = "http://testserver"
EMAIL = "ada@example.com"
LINK_RE = re.compile(r"http://testserver(/shop/d/([A-Za-z0-9_-]{43})/)")
RESEND = "/shop/resend/"

#: The site default's titles, one per state (DeliveryCopy's built-in words).
TITLES = {
    "paid": "Thank you for your purchase",
    "pending": "Your payment is processing",
    "failed": "The payment did not go through",
    "refunded": "This purchase was refunded",
    "revoked": "Access to this purchase was withdrawn",
    "suspended": "Downloads are paused",
}
#: Words that promise a link.
PROMISES = ("on its way", "on their way", "we are sending", "Go to your downloads")


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250, files=1)


@pytest.fixture
def webhook(client, django_capture_on_commit_callbacks):
    """Deliver an event through the signed webhook and run what it queued (tasks run inline)."""

    def deliver(obj, type_):
        with django_capture_on_commit_callbacks(execute=True):
            response = post_event(client, event_for(obj, type_))
        assert response.status_code == 200

    return deliver


def start_checkout(client, product) -> Purchase:
    """A Buy click from this browser (which is bound to the purchase), as a buyer makes it."""
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 303
    return Purchase.objects.latest("created_at")


def thanks(client, purchase):
    url = reverse("wagtail_paid_delivery:success")
    response = client.get(url, {"session_id": purchase.stripe_checkout_session_id})
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def paid(client, product, fake_stripe, webhook):
    """A purchase paid in this browser, its delivery email sent; returns (purchase, token)."""
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email=EMAIL)
    webhook(fake_stripe.session(session_id), "checkout.session.completed")
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    [message] = mail.outbox
    [(_, token)] = LINK_RE.findall(message.body)
    return purchase, token


def refund(purchase, fake_stripe, webhook):
    webhook(fake_stripe.refund(purchase.stripe_checkout_session_id), "charge.refunded")


def revoke(purchase, fake_stripe, webhook):
    fulfillment.revoke_purchase(purchase, reason="chargeback abuse")


def suspend(purchase, fake_stripe, webhook):
    webhook(fake_stripe.dispute(purchase.stripe_checkout_session_id), "charge.dispute.created")


NO_ACCESS = {"refunded": refund, "revoked": revoke, "suspended": suspend}
STATUS = {"refunded": "refunded", "revoked": "revoked", "suspended": "disputed"}


def expire_links(purchase):
    DownloadLink.objects.filter(purchase=purchase).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )


# The success page ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(NO_ACCESS))
def test_success_page_after_access_ended_says_why_and_offers_no_link(
    client, paid, fake_stripe, webhook, state
):
    purchase, _ = paid
    assert TITLES["paid"] in thanks(client, purchase)
    NO_ACCESS[state](purchase, fake_stripe, webhook)
    purchase.refresh_from_db()
    assert purchase.status == STATUS[state]

    html = thanks(client, purchase)
    assert TITLES[state] in html and "Field guide" in html
    assert "/shop/d/" not in html
    assert not [words for words in PROMISES if words in html]
    assert "contact the shop" in html


def test_success_page_whose_link_ended_says_so_and_points_to_fresh_links(client, paid):
    purchase, _ = paid
    assert "Go to your downloads" in thanks(client, purchase)
    expire_links(purchase)
    html = thanks(client, purchase)
    assert TITLES["paid"] in html and "/shop/d/" not in html
    assert "The download link on this page no longer works" in html
    assert f'href="{RESEND}?product={purchase.product_id}"' in html


def test_success_page_while_pending_promises_the_email_it_will_send(client, product, fake_stripe):
    purchase = start_checkout(client, product)
    fake_stripe.pay(purchase.stripe_checkout_session_id, email=EMAIL, payment_status="unpaid")
    html = thanks(client, purchase)
    assert TITLES["pending"] in html and EMAIL in html
    assert "if the payment fails, we will email you too" in html
    assert "/shop/d/" not in html


def test_success_page_after_a_failed_debit_offers_the_product_again(
    client, product, fake_stripe, webhook
):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email=EMAIL, payment_status="unpaid")
    fake_stripe.fail_async(session_id)
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    html = thanks(client, purchase)
    assert TITLES["failed"] in html and f'href="{product.url}"' in html
    assert "/shop/d/" not in html and not [w for w in PROMISES if w in html]


def test_a_stranger_is_promised_nothing_unconditionally(client, paid, fake_stripe, webhook):
    purchase, _ = paid
    refund(purchase, fake_stripe, webhook)
    client.cookies.clear()
    html = thanks(client, purchase)
    assert "Check your email" in html
    assert "If you completed a purchase" in html and "as soon as the payment is confirmed" in html
    assert "on its way" not in html


# A link's page ---------------------------------------------------------------------------------


def test_an_expired_link_of_a_paid_purchase_offers_fresh_links(client, paid):
    purchase, token = paid
    expire_links(purchase)
    response = client.get(f"/shop/d/{token}/")
    assert response.status_code == 410
    html = response.content.decode()
    assert "This link has expired" in html
    assert f'action="{RESEND}"' in html and "Send me fresh links" in html
    # The form names the link (the page already holds it), never the buyer's address.
    assert f'name="link" value="{token}"' in html
    assert EMAIL not in html


@pytest.mark.parametrize("expired", [False, True], ids=["live", "expired"])
@pytest.mark.parametrize("state", list(NO_ACCESS))
def test_a_link_of_a_purchase_without_access_explains_and_offers_no_resend(
    client, paid, fake_stripe, webhook, state, expired
):
    purchase, token = paid
    NO_ACCESS[state](purchase, fake_stripe, webhook)
    if expired:
        expire_links(purchase)
    response = client.get(f"/shop/d/{token}/")
    assert response.status_code == 410
    html = response.content.decode()
    assert TITLES[state] in html
    assert f'data-state="{"shop_revoked" if state == "revoked" else state}"' in html
    assert "contact the shop" in html
    assert RESEND not in html and "Send me fresh links" not in html and token not in html
    # The download button refuses in the same words.
    file_id = purchase.product.specific.product_files[0].pk
    response = client.post(f"/shop/d/{token}/{file_id}/")
    assert response.status_code == 410 and TITLES[state] in response.content.decode()


def test_the_product_copy_speaks_for_each_state(client, paid, fake_stripe, webhook):
    purchase, token = paid
    copy = DeliveryCopy.objects.create(
        name="Shop words",
        refunded_title="Refund done for {product}",
        refunded_message="We refunded {product} to {email}. Write to help@shop.test.",
    )
    type(purchase.product.specific).objects.filter(pk=purchase.product_id).update(
        delivery_copy=copy
    )
    refund(purchase, fake_stripe, webhook)
    html = client.get(f"/shop/d/{token}/").content.decode()
    assert "Refund done for Field guide" in html
    assert f"We refunded Field guide to {EMAIL}. Write to help@shop.test." in html


# Resend ----------------------------------------------------------------------------------------


@pytest.fixture
def enqueued(monkeypatch):
    """Record the resend tasks the view enqueues, and still run them (as the sync cluster does)."""
    calls = []
    real = resend_view.enqueue_resend

    def record(*args):
        calls.append(args)
        real(*args)

    monkeypatch.setattr(resend_view, "enqueue_resend", record)
    return calls


@pytest.mark.parametrize("state", list(NO_ACCESS))
def test_resend_from_a_stale_link_page_after_access_ended_sends_nothing_and_says_so(
    client, paid, fake_stripe, webhook, enqueued, state
):
    purchase, token = paid
    expire_links(purchase)
    # The buyer opened the expired link while the purchase was paid: the page offered the form.
    assert f'name="link" value="{token}"' in client.get(f"/shop/d/{token}/").content.decode()
    NO_ACCESS[state](purchase, fake_stripe, webhook)
    sent_before = len(mail.outbox)

    response = client.post(RESEND, {"email": EMAIL, "link": token})
    assert response.status_code == 200
    html = response.content.decode()
    assert TITLES[state] in html and "contact the shop" in html
    assert not [words for words in PROMISES if words in html]
    assert enqueued == []
    assert len(mail.outbox) == sent_before
    assert not OutboundEmail.objects.filter(kind=OutboundEmail.Kind.RESEND).exists()
    assert not DownloadLink.objects.filter(reason=DownloadLink.Reason.RESEND).exists()


def test_resend_from_a_paid_links_page_says_exactly_where_the_links_went(client, paid, enqueued):
    purchase, token = paid
    expire_links(purchase)
    response = client.post(RESEND, {"email": EMAIL.upper(), "link": token})
    assert response.status_code == 200
    html = response.content.decode()
    assert f"Fresh download links for Field guide are on their way to {EMAIL}" in html
    assert enqueued == [(EMAIL, purchase.product_id)]
    message = mail.outbox[-1]
    assert message.to == [EMAIL] and message.subject == "Fresh download links for Field guide"
    assert "You asked for fresh download links." in message.body
    [(path, _)] = LINK_RE.findall(message.body)
    assert client.get(path).status_code == 200


def test_resend_from_a_links_page_over_the_address_limit_promises_nothing(
    client, paid, enqueued, settings
):
    purchase, token = paid
    expire_links(purchase)
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "RESEND_EMAIL_RATE_LIMIT": (1, 3600),
    }
    first = client.post(RESEND, {"email": EMAIL, "link": token}).content.decode()
    second = client.post(RESEND, {"email": EMAIL, "link": token}).content.decode()
    assert "are on their way to" in first
    # Nothing is asked for the second time, so it is not said to be on its way.
    assert "are on their way" not in second and "we are sending it fresh links" in second
    assert enqueued == [(EMAIL, purchase.product_id)]


def test_resend_from_a_links_page_with_another_address_answers_like_the_anonymous_form(
    client, paid, enqueued
):
    purchase, token = paid
    expire_links(purchase)
    other = client.post(RESEND, {"email": "someone@example.com", "link": token})
    anonymous = client.post(RESEND, {"email": "someone@example.com"})
    assert other.content == anonymous.content
    assert enqueued == [("someone@example.com", None)] * 2
    assert "we are sending it fresh links" in other.content.decode()


def test_the_token_in_the_resend_form_is_kept_out_of_error_reports(client, paid, enqueued):
    from django.views.debug import SafeExceptionReporterFilter

    _, token = paid
    response = client.post(RESEND, {"email": EMAIL, "link": token})
    request = response.wsgi_request
    assert request.sensitive_post_parameters == ("link",)
    cleansed = SafeExceptionReporterFilter().get_post_parameters(request)
    assert cleansed["link"] != token and token not in str(cleansed)


@pytest.mark.parametrize("link", ["A" * 43, "not a token", "x" * 64, ""])
def test_a_made_up_link_in_the_resend_form_is_the_anonymous_form(client, paid, enqueued, link):
    response = client.post(RESEND, {"email": EMAIL, "link": link})
    assert response.status_code == 200
    assert "we are sending it fresh links" in response.content.decode()
    assert enqueued == [(EMAIL, None)]


def test_the_anonymous_form_tells_a_refunded_address_nothing_and_sends_nothing(
    client, paid, fake_stripe, webhook, enqueued
):
    purchase, _ = paid
    refund(purchase, fake_stripe, webhook)
    sent_before = len(mail.outbox)
    refunded = client.post(RESEND, {"email": EMAIL})
    stranger = client.post(RESEND, {"email": "nobody@example.com"})
    # One answer for both, and it promises only what is true for each.
    assert refunded.status_code == stranger.status_code == 200
    assert refunded.content == stranger.content
    html = refunded.content.decode()
    assert "If that address has a purchase that can still be downloaded" in html
    assert "Refunded or cancelled purchases get no links" in html
    assert "on its way" not in html and "on their way" not in html
    assert len(enqueued) == 2 and len(mail.outbox) == sent_before
    assert not OutboundEmail.objects.filter(kind=OutboundEmail.Kind.RESEND).exists()


# A failed bank debit ---------------------------------------------------------------------------


def fail_debit(client, product, fake_stripe, webhook):
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email=EMAIL, payment_status="unpaid")
    webhook(fake_stripe.session(session_id), "checkout.session.completed")
    fake_stripe.fail_async(session_id, "Insufficient funds.")
    return purchase, session_id


def test_a_failed_debit_emails_the_buyer_once_with_a_way_to_try_again(
    client, product, fake_stripe, webhook
):
    purchase, session_id = fail_debit(client, product, fake_stripe, webhook)
    assert mail.outbox == []
    # Stripe delivers the event twice (and the success page and reconciliation may look too).
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    thanks(client, purchase)
    fulfillment.fulfill_checkout(session_id)

    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.FAILED
    [message] = mail.outbox
    assert message.to == [EMAIL]
    assert message.subject == "Your payment for Field guide did not go through"
    assert "you have not been charged and no download was sent to ada@example.com" in message.body
    product_url = product.get_full_url()
    assert product_url and product_url in message.body
    html = next(body for body, kind in message.alternatives if kind == "text/html")
    assert f'href="{product_url}"' in html and "Try again" in html
    assert "/shop/d/" not in message.body and "/shop/d/" not in html
    [email] = OutboundEmail.objects.filter(kind=OutboundEmail.Kind.PAYMENT_FAILED)
    assert (email.status, email.purchase_id, email.attempts) == ("sent", purchase.pk, 1)
    assert message.extra_headers["Message-ID"] == email.message_id


def test_the_shop_desk_timeline_shows_the_failed_payment_email(
    client, admin_client, product, fake_stripe, webhook
):
    purchase, session_id = fail_debit(client, product, fake_stripe, webhook)
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    url = reverse("wagtail_paid_delivery_purchases:inspect", args=[purchase.pk])
    html = admin_client.get(url).content.decode()
    assert "Failed payment email sent" in html


def test_a_failed_debit_found_by_the_success_page_first_is_still_one_email(
    client, product, fake_stripe, webhook, django_capture_on_commit_callbacks
):
    purchase, session_id = fail_debit(client, product, fake_stripe, webhook)
    with django_capture_on_commit_callbacks(execute=True):
        html = thanks(client, purchase)
    assert TITLES["failed"] in html
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    assert len(mail.outbox) == 1
    assert OutboundEmail.objects.filter(kind=OutboundEmail.Kind.PAYMENT_FAILED).count() == 1


def test_a_failed_debit_whose_email_cannot_go_is_retried_by_the_sweep(
    client, product, fake_stripe, webhook, settings
):
    from tests.mail_backends import DownBackend
    from wagtail_paid_delivery import outbox

    purchase, session_id = fail_debit(client, product, fake_stripe, webhook)
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    DownBackend.handed = []
    webhook(fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    email = OutboundEmail.objects.get(kind=OutboundEmail.Kind.PAYMENT_FAILED)
    assert (email.status, email.attempts) == ("pending", 1) and email.last_error
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.filter(pk=email.pk).update(next_attempt_at=timezone.now())
    assert outbox.attempt(email.pk) == "sent"
    assert outbox.attempt(email.pk) == "already_sent"
    assert len(mail.outbox) == 1


def test_a_checkout_that_never_started_sends_no_failure_email(product):
    purchase = PurchaseFactory(product=product, email=EMAIL)
    assert fulfillment.fail_checkout(purchase, "Stripe refused the session")
    assert not OutboundEmail.objects.exists() and mail.outbox == []


def test_a_failure_notice_not_yet_sent_is_cancelled_when_the_payment_is_paid_after_all(
    client, product, fake_stripe, webhook
):
    from wagtail_paid_delivery import outbox

    purchase, _ = fail_debit(client, product, fake_stripe, webhook)
    email, new = outbox.promise(OutboundEmail.Kind.PAYMENT_FAILED, to=EMAIL, purchase=purchase)
    assert new
    Purchase.objects.filter(pk=purchase.pk).update(status=Purchase.Status.PAID)
    assert outbox.attempt(email.pk).startswith("cancelled: the purchase is paid")
    assert mail.outbox == []


# Existing copy ---------------------------------------------------------------------------------


def test_the_migration_rewords_only_untouched_builtin_words():
    migration = importlib.import_module("wagtail_paid_delivery.migrations.0011_honest_states")
    untouched = DeliveryCopy.objects.create(
        name="Old", **{name: old for name, old in migration.REWORDED.items()}
    )
    edited = DeliveryCopy.objects.create(name="Edited", resend_confirmation="Our own words.")

    class Editor:
        pass

    editor = Editor()
    editor.connection = connection
    migration.reword_builtin_copy(django_apps, editor)

    untouched.refresh_from_db()
    edited.refresh_from_db()
    for name in migration.REWORDED:
        assert getattr(untouched, name) == DeliveryCopy._meta.get_field(name).default
    assert edited.resend_confirmation == "Our own words."


NEW_FIELDS = [
    "refunded_title",
    "refunded_message",
    "shop_revoked_title",
    "shop_revoked_message",
    "suspended_title",
    "suspended_message",
    "payment_failed_email_subject",
    "payment_failed_email_body",
    "resend_sent",
    "resend_email_subject",
    "resend_email_intro",
]


def test_editors_find_every_new_field_in_the_copy_editor(admin_client):
    copy = DeliveryCopy.objects.get_default()
    url = reverse("wagtailsnippets_wagtail_paid_delivery_deliverycopy:edit", args=[copy.pk])
    html = admin_client.get(url).content.decode()
    for name in NEW_FIELDS:
        assert f'name="{name}"' in html, name
    for heading in ("Refunded", "Revoked by the shop", "Suspended during a dispute"):
        assert heading in html
    assert "Failed payment email" in html
