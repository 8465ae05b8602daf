"""A refund and the failed emails in a real browser, as a shop owner sees them. Takes
docs/screenshots/desk-refund.png, desk-refunded.png and desk-failed-emails.png
(WPD_SCREENSHOTS=1)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.test_desk_refunds import refund, sold  # noqa: F401  (sold is a fixture)
from tests.test_download_browser import in_thread
from tests.test_shop_desk import url
from tests.test_shop_desk_browser import full_screenshot
from wagtail_paid_delivery import outbox
from wagtail_paid_delivery.models import OutboundEmail, Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def session(admin_user) -> str:
    """A signed-in admin's session (made before the browser starts: Playwright's sync API
    then keeps an event loop in this thread, where the ORM refuses to run)."""
    client = Client()
    client.force_login(admin_user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def browser_page(headless_chromium, live_server, session):
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    return context, context.new_page()


@pytest.fixture
def partly_refunded(sold, admin_client):  # noqa: F811
    refund(admin_client, sold, "2.50")  # a first, partial refund, made earlier
    return sold


def test_browser_partial_then_full_refund(partly_refunded, session, live_server, headless_chromium):
    purchase = partly_refunded
    context, page = browser_page(headless_chromium, live_server, session)
    page.goto(live_server.url + url("inspect", purchase.pk))
    page.get_by_role("link", name="Refund through Stripe").click()
    page.wait_for_url(f"**{url('refund', purchase.pk)}")
    assert page.get_by_label("Amount to refund (USD)").input_value() == "10.00"
    page.get_by_label("Note").fill("Bought it twice by mistake; keeps the first copy.")
    page.get_by_role("button", name="Refund", exact=True).wait_for(timeout=10000)
    full_screenshot(page, "desk-refund.png")

    page.get_by_role("button", name="Refund", exact=True).click()
    page.wait_for_url(f"**{url('inspect', purchase.pk)}")
    assert page.get_by_text("Refunded $10.00 through Stripe").first.is_visible()
    timeline_text = page.locator("table.wpd-timeline").inner_text()
    assert "Refunded $2.50 through Stripe" in timeline_text
    assert "Refunded: access ended" in timeline_text
    full_screenshot(page, "desk-refunded.png")
    status = in_thread(lambda: Purchase.objects.values_list("status", "amount_refunded").get())
    assert status == (Purchase.Status.REFUNDED, 1250)
    context.close()


@pytest.fixture
def failing_emails(home):
    guide = ProductPageFactory(parent=home, title="The Field Guide", price_amount=1250)
    songs = ProductPageFactory(parent=home, title="Dawn Chorus (album)", price_amount=900)
    now = timezone.now()
    rows = [
        (
            "ada@example.com",
            guide,
            OutboundEmail.Kind.DELIVERY,
            OutboundEmail.Status.FAILED,
            8,
            "SMTPAuthenticationError: (535, b'5.7.8 Username and Password not accepted')",
            None,
            timedelta(hours=30),
        ),
        (
            "li.wei@example.net",
            songs,
            OutboundEmail.Kind.DESK,
            OutboundEmail.Status.FAILED,
            8,
            "SMTPRecipientsRefused: {'li.wei@example.net': (550, b'5.1.1 Mailbox unavailable')}",
            None,
            timedelta(hours=20),
        ),
        (
            "m.okafor@example.org",
            guide,
            OutboundEmail.Kind.DELIVERY,
            OutboundEmail.Status.PENDING,
            3,
            "SMTPServerDisconnected: Connection unexpectedly closed",
            timedelta(minutes=7),
            timedelta(minutes=9),
        ),
        (
            "sam@example.com",
            songs,
            OutboundEmail.Kind.RESEND,
            OutboundEmail.Status.PENDING,
            1,
            "TimeoutError: timed out",
            timedelta(minutes=1),
            timedelta(minutes=2),
        ),
    ]
    for to, product, kind, status, attempts, error, next_in, ago in rows:
        purchase = PurchaseFactory(paid=True, product=product, email=to)
        OutboundEmail.objects.create(
            kind=kind,
            to=to,
            purchase=purchase if kind != OutboundEmail.Kind.RESEND else None,
            message_id=outbox.new_message_id(),
            status=status,
            attempts=attempts,
            last_error=error,
            next_attempt_at=now + next_in if next_in else None,
            created_at=now - ago - timedelta(hours=2),
            last_attempt_at=now - ago,
        )


def test_browser_failed_emails_listing(failing_emails, session, live_server, headless_chromium):
    context, page = browser_page(headless_chromium, live_server, session)
    response = page.goto(live_server.url + "/admin/shop/emails/")
    assert response.status == 200
    assert page.get_by_role("heading", name="Failed emails").is_visible()
    assert page.get_by_text("none: send it again").count() == 2
    assert page.get_by_text("retrying").count() >= 2
    full_screenshot(page, "desk-failed-emails.png")

    page.get_by_role("link", name="Delivery email").last.click()
    page.get_by_role("link", name="Send this email again").click()
    page.get_by_role("button", name="Yes, send it again").wait_for(timeout=10000)
    assert page.get_by_text("fresh set of attempts").is_visible()
    context.close()
