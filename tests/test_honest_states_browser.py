"""In real Chromium at 1280 px: the pages a buyer reads after a refund and after a failed debit.

Takes docs/screenshots/honest-*.png (with ``WPD_SCREENSHOTS=1``).
"""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.factories import ProductPageFactory
from tests.screenshots import SCREENSHOTS
from tests.stripe_fake import event_for, post_event
from tests.test_success_page import start_checkout
from wagtail_paid_delivery import binding

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

WIDTH = 1280
EMAIL = "ada@example.com"


def webhook(client, obj, type_):
    assert post_event(client, event_for(obj, type_)).status_code == 200


@pytest.fixture
def shop(home, fake_stripe):
    """Two checkouts from one browser: one paid then refunded (with its emailed link), one whose
    bank debit failed (with its email). Made before the browser starts (Playwright keeps an
    event loop on the test thread, where the ORM then refuses to run)."""
    product = ProductPageFactory(parent=home, title="The Field Guide", price_amount=1250)
    client = Client()

    refunded = start_checkout(client, product)
    fake_stripe.pay(refunded.stripe_checkout_session_id, email=EMAIL)
    webhook(
        client,
        fake_stripe.session(refunded.stripe_checkout_session_id),
        "checkout.session.completed",
    )
    token = re.search(r"/shop/d/([A-Za-z0-9_-]{43})/", mail.outbox[-1].body).group(1)
    webhook(client, fake_stripe.refund(refunded.stripe_checkout_session_id), "charge.refunded")

    failed = start_checkout(client, product)
    session_id = failed.stripe_checkout_session_id
    fake_stripe.pay(session_id, email=EMAIL, payment_status="unpaid")
    webhook(client, fake_stripe.session(session_id), "checkout.session.completed")
    fake_stripe.fail_async(session_id, "The bank debit was returned.")
    webhook(client, fake_stripe.session(session_id), "checkout.session.async_payment_failed")
    [notice] = [m for m in mail.outbox if "did not go through" in m.subject]
    notice_html = next(body for body, kind in notice.alternatives if kind == "text/html")
    return {
        "cookie": client.cookies[binding.COOKIE_NAME].value,
        "refunded_session": refunded.stripe_checkout_session_id,
        "token": token,
        "failed_session": session_id,
        "notice_html": notice_html,
        "product_url": product.get_full_url(),
    }


def test_refunded_and_failed_pages_say_what_happened(shop, live_server, headless_chromium):
    context = headless_chromium.new_context(viewport={"width": WIDTH, "height": 720})
    host = live_server.url.split("//", 1)[1].split(":", 1)[0]
    context.add_cookies(
        [{"name": binding.COOKIE_NAME, "value": shop["cookie"], "domain": host, "path": "/"}]
    )
    page = context.new_page()
    thanks = live_server.url + reverse("wagtail_paid_delivery:success")

    # The refunded purchase's emailed link: why it stopped, no resend form.
    response = page.goto(f"{live_server.url}/shop/d/{shop['token']}/")
    assert response.status == 410
    assert page.get_by_role("heading", name="This purchase was refunded").is_visible()
    assert page.get_by_text("no new ones will be sent").is_visible()
    assert page.get_by_role("button", name="Send me fresh links").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "honest-refunded-link.png"), full_page=True)

    # The success page of the same purchase, in the browser that paid.
    assert page.goto(f"{thanks}?session_id={shop['refunded_session']}").status == 200
    assert page.get_by_role("heading", name="This purchase was refunded").is_visible()
    assert page.get_by_role("link", name="Go to your downloads").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "honest-refunded-success.png"), full_page=True)

    # The failed debit: the success page offers the product again.
    assert page.goto(f"{thanks}?session_id={shop['failed_session']}").status == 200
    assert page.get_by_role("heading", name="The payment did not go through").is_visible()
    back = page.get_by_role("link", name="Back to the product")
    assert back.is_visible()
    page.screenshot(path=str(SCREENSHOTS / "honest-payment-failed.png"), full_page=True)

    # The email that said so, as a mail client shows it: its button leads to the product.
    page.set_content(shop["notice_html"])
    button = page.get_by_role("link", name="Try again")
    assert button.get_attribute("href") == shop["product_url"]
    page.screenshot(path=str(SCREENSHOTS / "honest-payment-failed-email.png"), full_page=True)
    context.close()
