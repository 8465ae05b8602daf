"""File versions in a real browser: the download page and the library show each file's version,
date and notes; the editor shows the file's notes field and the versions panel.

Takes docs/screenshots/versions-download-page-{1280,390}.png, versions-library-1280.png,
versions-editor-notes-1280.png and versions-editor-1280.png (with ``WPD_SCREENSHOTS=1``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import Client
from django.utils import timezone

from tests.factories import (
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
    SuperuserFactory,
    UserFactory,
)
from tests.screenshots import SCREENSHOTS
from tests.test_download_browser import in_thread
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import FileVersion, Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

NOTES = "Corrected the tide tables on pages 12 and 40.\nAdded a map of the northern dunes."


@pytest.fixture
def shop(home):
    product = ProductPageFactory(parent=home, title="Field guide", files=0)
    guide = ProductFileFactory(
        page=product,
        title="Field guide (PDF)",
        file=ContentFile(b"%PDF-1.4 first\n" * 2000, name="field-guide.pdf"),
        release_notes="First edition.",
    )
    ProductFileFactory(
        page=product,
        title="Shoreline checklist",
        file=ContentFile(b"Shoreline checklist\n" * 200, name="checklist.txt"),
    )
    reader = UserFactory(username="reader", email="reader@example.com")
    purchase = PurchaseFactory(paid=True, product=product, email="reader@example.com", user=reader)
    Purchase.objects.filter(pk=purchase.pk).update(paid_at=timezone.now() - timedelta(days=30))
    FileVersion.objects.filter(file_id=guide.pk).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    # The editor's new upload, published with its notes: version 2.
    guide.file = ContentFile(b"%PDF-1.7 second\n" * 2400, name="field-guide.pdf")
    guide.release_notes = NOTES
    guide.save()
    issued = links.issue_link(Purchase.objects.get(pk=purchase.pk), reason="webhook")
    sessions = {}
    for name, user in (("reader", reader), ("admin", SuperuserFactory(username="editor"))):
        client = Client()
        client.force_login(user)
        sessions[name] = client.cookies[settings.SESSION_COOKIE_NAME].value
    return product, issued, sessions


def signed_in(browser, live_server, session: str, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    return context


@pytest.mark.parametrize("width", [1280, 390])
def test_browser_download_page_shows_version_date_and_notes(
    shop, live_server, headless_chromium, width
):
    _product, issued, _ = shop
    context = headless_chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    assert page.goto(live_server.url + f"/shop/d/{issued.token}/").status == 200
    assert page.get_by_text("Version 2,").is_visible()
    assert page.get_by_text("Corrected the tide tables on pages 12 and 40.").is_visible()
    assert page.get_by_text("Added a map of the northern dunes.").is_visible()
    assert page.get_by_text("Version 1,").is_visible()  # the checklist, never replaced
    assert str(timezone.localdate().year) in page.inner_text(".version >> nth=0")
    page.screenshot(path=str(SCREENSHOTS / f"versions-download-page-{width}.png"), full_page=True)
    context.close()


def test_browser_library_shows_the_version_the_buyer_is_served(
    shop, live_server, headless_chromium
):
    product, _issued, sessions = shop
    context = signed_in(headless_chromium, live_server, sessions["reader"], 1280)
    page = context.new_page()
    assert page.goto(live_server.url + "/shop/library/").status == 200
    assert page.get_by_text("Version 2,").is_visible()
    assert page.get_by_text("Corrected the tide tables on pages 12 and 40.").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "versions-library-1280.png"), full_page=True)
    # Under "the version they bought" the same buyer is shown version 1 and its notes.
    in_thread(lambda: type(product).objects.filter(pk=product.pk).update(past_buyers_get="bought"))
    page.reload()
    assert page.get_by_text("Version 1,").first.is_visible()
    assert page.get_by_text("First edition.").is_visible()
    assert page.get_by_text("Corrected the tide tables").count() == 0
    context.close()


def test_browser_editor_shows_the_notes_field_and_the_versions_panel(
    shop, live_server, headless_chromium
):
    product, _issued, sessions = shop
    context = signed_in(headless_chromium, live_server, sessions["admin"], 1280)
    page = context.new_page()
    assert page.goto(live_server.url + f"/admin/pages/{product.pk}/edit/").status == 200
    notes = page.locator('textarea[name="files-0-release_notes"]')
    assert notes.input_value() == NOTES
    notes.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "versions-editor-notes-1280.png"))
    panel = page.locator(".wpd-versions")
    panel.scroll_into_view_if_needed()
    assert panel.get_by_text("First edition.").is_visible()
    assert panel.get_by_text("(current)").first.is_visible()
    assert page.get_by_label("the version they bought").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "versions-editor-1280.png"))
    context.close()
