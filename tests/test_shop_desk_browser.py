"""The shop desk in a real browser: the purchases listing and a purchase's inspect view with its
full timeline, as a shop owner sees them. Takes docs/screenshots/desk-*.png (WPD_SCREENSHOTS=1).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from wagtail.models import ModelLogEntry

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.screenshots import SCREENSHOTS
from tests.test_download_browser import in_thread
from tests.test_shop_desk import story, url  # noqa: F401  (story is a fixture)
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadLink,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

S = Purchase.Status


def spread_over_days(purchase: Purchase) -> None:
    """The story happened within a second; give it the days a real one takes, so the
    screenshot reads like a shop's week (same order, plausible times)."""
    start = timezone.now().replace(hour=14, minute=2, second=11) - timedelta(days=3)
    paid = start + timedelta(minutes=2)
    Purchase.objects.filter(pk=purchase.pk).update(
        created_at=start, paid_at=paid, delivery_email_sent_at=paid + timedelta(seconds=4)
    )
    OutboundEmail.objects.filter(purchase=purchase).update(
        created_at=paid, last_attempt_at=paid, sent_at=paid + timedelta(seconds=4)
    )
    events = list(StripeEvent.objects.order_by("pk"))
    StripeEvent.objects.filter(pk=events[0].pk).update(
        received_at=paid - timedelta(seconds=1), processed_at=paid
    )
    StripeEvent.objects.filter(pk=events[-1].pk).update(
        received_at=timezone.now() - timedelta(minutes=9)
    )
    link = DownloadLink.objects.get(purchase=purchase)
    extended = start + timedelta(days=2, hours=1, minutes=30)
    DownloadLink.objects.filter(pk=link.pk).update(
        created_at=paid + timedelta(seconds=3), expires_at=extended + timedelta(hours=48)
    )
    downloads = list(DownloadEvent.objects.order_by("pk"))
    moments = [
        paid + timedelta(minutes=12),
        start + timedelta(days=2, minutes=40),
        extended + timedelta(minutes=7),
    ]
    for event, moment in zip(downloads, moments, strict=True):
        DownloadEvent.objects.filter(pk=event.pk).update(created_at=moment)
    for entry in ModelLogEntry.objects.filter(object_id=str(purchase.pk)):
        entry.timestamp = extended
        entry.data.update(
            previous=(paid + timedelta(days=1)).isoformat(),
            expires_at=(extended + timedelta(hours=48)).isoformat(),
        )
        entry.save()


@pytest.fixture
def desk_shop(story, home, admin_user):  # noqa: F811
    purchase, _token, _guide = story
    spread_over_days(purchase)
    guide = purchase.product
    songs = ProductPageFactory(parent=home, title="Dawn Chorus (album)", price_amount=900)
    now = timezone.now()
    others = [
        ("li.wei@example.net", guide, S.PAID, 1, True),
        ("m.okafor@example.org", songs, S.PAID, 2, True),
        ("sam@example.com", songs, S.PENDING, 0, True),
        ("jo@example.com", guide, S.REFUNDED, 4, True),
        ("tester@example.com", songs, S.PAID, 5, False),
        ("kim@example.com", guide, S.EXPIRED, 6, True),
    ]
    for email, product, status, days, live in others:
        made = PurchaseFactory(
            product=product,
            email=email,
            status=status,
            livemode=live,
            paid_at=now - timedelta(days=days) if status in (S.PAID, S.REFUNDED) else None,
        )
        Purchase.objects.filter(pk=made.pk).update(
            created_at=now - timedelta(days=days, minutes=37 * days)
        )
    client = Client()
    client.force_login(admin_user)
    return purchase, client.cookies[settings.SESSION_COOKIE_NAME].value


def full_screenshot(page, name: str) -> None:
    """The whole page: the admin scrolls inside its own container, so grow the viewport to the
    content's height (a full_page screenshot would stop at the window)."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": 1400, "height": min(max(height, 900), 6000)})
    page.screenshot(path=str(SCREENSHOTS / name))
    page.set_viewport_size({"width": 1400, "height": 900})


def test_browser_listing_and_inspect_view(desk_shop, live_server, headless_chromium):
    purchase, session = desk_shop
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    response = page.goto(live_server.url + url("index"))
    assert response.status == 200
    assert page.get_by_role("link", name="ada@example.com").is_visible()
    full_screenshot(page, "desk-purchases.png")

    page.get_by_role("link", name="ada@example.com").click()
    page.wait_for_url(f"**{url('inspect', purchase.pk)}")
    assert page.get_by_text("Can the buyer download now?").is_visible()
    assert page.get_by_role("heading", name="Timeline").is_visible()
    rows = page.locator("table.wpd-timeline tbody tr")
    assert rows.count() == 10
    assert "Charge refunded" in rows.nth(9).inner_text()
    full_screenshot(page, "desk-purchase.png")

    # The first action a shop owner takes on such a day: resend, confirmed on its own page.
    page.get_by_role("link", name="Resend the delivery email").click()
    page.wait_for_url(f"**{url('resend', purchase.pk)}")
    page.get_by_role("button", name="Yes, send it").wait_for(timeout=10000)
    full_screenshot(page, "desk-resend.png")
    page.get_by_role("button", name="Yes, send it").click()
    page.wait_for_url(f"**{url('inspect', purchase.pk)}")
    assert page.get_by_text("Delivery email sent to ada@example.com").is_visible()
    count = in_thread(lambda: DownloadLink.objects.filter(purchase=purchase).count())
    assert count == 2
    context.close()
