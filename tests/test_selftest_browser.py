"""The delivery self-test page in a real browser: a shop owner runs the full self-test and reads
its result. Takes docs/screenshots/desk-selftest.png (WPD_SCREENSHOTS=1)."""

from __future__ import annotations

import pytest
from django.test import Client
from django_q.models import Task

from tests.test_download_browser import in_thread
from tests.test_shop_desk_browser import full_screenshot
from wagtail_paid_delivery.schedules import ensure_schedules

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def owner_session(live_server, admin_user, settings):
    settings.WAGTAILADMIN_BASE_URL = live_server.url
    ensure_schedules()
    client = Client()
    client.force_login(admin_user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_browser_selftest_page(owner_session, live_server, headless_chromium, settings):
    session = owner_session
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    response = page.goto(live_server.url + "/admin/paid-delivery/selftest/")
    assert response.status == 200
    assert page.get_by_text("No full run yet.").is_visible()

    # The tests' task cluster runs at once (sync), so the probes ask this live server now.
    page.get_by_role("button", name="Run the full self-test").click()
    page.get_by_text("Self-test queued").wait_for(timeout=20000)
    assert page.get_by_text("Last full run, HTTP probes included").is_visible()
    rows = page.locator("table.wpd-table").nth(1).locator("tbody tr")
    assert rows.count() == 7  # one row per check, "No email stuck" included
    # The result column only: "text=FAIL" would also match the menu's "Failed emails".
    results = [rows.nth(i).locator("td, th").first.inner_text().strip() for i in range(7)]
    assert results == ["OK"] * 7, page.locator("table.wpd-table").nth(1).inner_text()
    full_screenshot(page, "desk-selftest.png")
    assert in_thread(lambda: Task.objects.count()) == 1
    context.close()
