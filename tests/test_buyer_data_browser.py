"""A buyer's side of the desk in a real browser: "view as this buyer" and the erase
confirmation, as a shop owner sees them. Takes docs/screenshots/desk-view-as.png and
desk-erase.png (WPD_SCREENSHOTS=1)."""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.test_download_browser import in_thread
from tests.test_shop_desk import story, url  # noqa: F401  (story is a fixture)
from tests.test_shop_desk_browser import desk_shop, full_screenshot  # noqa: F401
from wagtail_paid_delivery.models import DownloadLink, FileDownloadCount, Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def counted() -> tuple:
    links = list(DownloadLink.objects.values_list("pk", "download_count", "revoked_at"))
    return links, list(FileDownloadCount.objects.values_list("pk", "count"))


def test_browser_view_as_and_erase(desk_shop, live_server, headless_chromium):  # noqa: F811
    purchase, session = desk_shop
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    before = in_thread(counted)
    page.goto(live_server.url + url("inspect", purchase.pk))
    page.get_by_role("link", name="View as this buyer").click()
    page.wait_for_url("**/view-as/")
    assert page.get_by_role("heading", name="Success page").is_visible()
    full_screenshot(page, "desk-view-as.png")
    frame = page.frame_locator("iframe").nth(1)
    frame.get_by_role("button", name="Download Field guide (PDF)").wait_for(timeout=10000)
    assert in_thread(counted) == before  # looking issued and counted nothing

    page.goto(live_server.url + url("inspect", purchase.pk))
    page.get_by_role("link", name="Export or erase the buyer's data").click()
    page.get_by_role("button", name="Erase…").click()
    page.get_by_label("Type the buyer's email address again to confirm").fill("ADA@example.com")
    full_screenshot(page, "desk-erase.png")
    page.get_by_role("button", name="Erase this buyer's data").click()
    page.wait_for_url(f"**{url('inspect', purchase.pk)}")
    assert page.get_by_text("Buyer data erased:").is_visible()
    erased = in_thread(lambda: Purchase.objects.get(pk=purchase.pk))
    assert erased.email == "" and erased.erased_at is not None
    context.close()
