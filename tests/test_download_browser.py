"""A real browser clicks the download button against a live server and gets the right bytes.

Also takes the screenshots in docs/screenshots/download-*.png.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from tests.factories import (
    DeliveryCopyFactory,
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
)
from tests.screenshots import SCREENSHOTS
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadLink, FileDownloadCount

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

DATA = b"%PDF-1.4 field guide\n" + bytes(range(256)) * 300


def in_thread(fn):
    """Run ORM code off the test thread: Playwright's sync API keeps an event loop there."""
    result = {}

    def run():
        from django.db import connections

        try:
            result["value"] = fn()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result.get("value")


@pytest.fixture
def bought(home):
    copy = DeliveryCopyFactory(name="Browser copy")
    product = ProductPageFactory(parent=home, title="The Field Guide", files=0, delivery_copy=copy)
    guide = ProductFileFactory(
        page=product, title="Field guide (PDF)", file=ContentFile(DATA, name="field-guide.pdf")
    )
    ProductFileFactory(
        page=product, title="Maps", file=ContentFile(b"maps" * 5000, name="maps.zip")
    )
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, guide


def test_browser_click_downloads_the_file(bought, live_server, headless_chromium, tmp_path):
    issued, guide = bought
    url = live_server.url + reverse("wagtail_paid_delivery:download", args=[issued.token])
    context = headless_chromium.new_context(
        accept_downloads=True, viewport={"width": 900, "height": 700}
    )
    page = context.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    response = page.goto(url)
    assert response.status == 200
    assert page.locator(".file-title", has_text="Field guide (PDF)").is_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "download-page.png"), full_page=True)
    # Standalone: the page loads nothing but itself.
    assert all(r.startswith(live_server.url) for r in requests), requests

    with page.expect_download() as info:
        page.get_by_role("button", name="Download Field guide (PDF)").click()
    download = info.value
    assert download.suggested_filename == "field-guide.pdf"
    target = tmp_path / "got.pdf"
    download.save_as(str(target))
    assert target.read_bytes() == DATA

    def counted():
        row = FileDownloadCount.objects.get(link=issued.link, file_id=guide.pk)
        return row.count, list(DownloadEvent.objects.values_list("outcome", "counted"))

    count, events = in_thread(counted)
    assert count == 1
    assert ("served", True) in events

    # The same link after it expired: the 410 page, in the editor's words.
    in_thread(
        lambda: DownloadLink.objects.filter(pk=issued.link.pk).update(
            expires_at=issued.link.created_at - timedelta(seconds=1)
        )
    )
    response = page.goto(url)
    assert response.status == 410
    assert page.get_by_text("This link has expired").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "download-expired.png"), full_page=True)
    context.close()
