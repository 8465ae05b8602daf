"""The event inbox and the dashboard panel in a real browser, as a shop owner sees them. Takes
docs/screenshots/desk-events.png, desk-event.png and desk-dashboard.png (WPD_SCREENSHOTS=1)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.factories import DownloadEventFactory, StripeEventFactory
from tests.test_shop_desk import story  # noqa: F401  (a fixture)
from tests.test_shop_desk_browser import desk_shop, full_screenshot  # noqa: F401  (a fixture)
from wagtail_paid_delivery import heartbeat
from wagtail_paid_delivery.models import DownloadLink, StripeEvent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

E = StripeEvent.Status


@pytest.fixture
def busy_inbox(desk_shop):  # noqa: F811
    """The desk's shop, plus what a month of webhooks leaves: an event another integration's,
    one that failed for good, downloads spread over the month, and a cluster that just ran."""
    purchase, session = desk_shop
    now = timezone.now()
    StripeEventFactory(
        type="customer.created",
        status=E.IGNORED,
        last_error="unhandled event type 'customer.created'",
        received_at=now - timedelta(hours=5),
    )
    StripeEventFactory(
        type="checkout.session.completed",
        status=E.FAILED,
        attempts=8,
        last_error="StripeUnavailable: Stripe did not answer (gave up after 8 attempts; "
        "run `manage.py reprocess evt_test_…` once fixed)",
        received_at=now - timedelta(hours=2),
    )
    link = DownloadLink.objects.filter(purchase=purchase).first()
    for days in (0, 1, 1, 2, 4, 4, 4, 7, 9, 12, 15, 15, 21, 26):
        DownloadEventFactory(link=link, counted=True, created_at=now - timedelta(days=days))
    heartbeat.beat(now=now - timedelta(seconds=40))
    return purchase, session


def test_browser_event_inbox_and_dashboard(busy_inbox, live_server, headless_chromium):
    from django.conf import settings

    _purchase, session = busy_inbox
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    events_url = reverse("wagtail_paid_delivery_events:index")
    assert page.goto(live_server.url + events_url).status == 200
    assert page.get_by_text("failed: needs reprocessing").first.is_visible()
    assert page.get_by_text("failed: retrying").first.is_visible()
    full_screenshot(page, "desk-events.png")

    page.get_by_role("link", name="charge.refunded").click()
    page.wait_for_url("**/admin/shop/events/*/")
    assert page.get_by_role("heading", name="Payload (as Stripe sent it)").is_visible()
    full_screenshot(page, "desk-event.png")

    assert page.goto(live_server.url + reverse("wagtailadmin_home")).status == 200
    assert page.get_by_text("Stripe event failed and will not be retried").is_visible()
    assert page.locator("svg rect.wpd-bar").count() == 60
    full_screenshot(page, "desk-dashboard.png")
    context.close()
