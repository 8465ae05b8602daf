"""A real browser buys a bundle through the sandbox's Stripe emulator, opens each included
product's downloads from the success page, and an editor sees the bundle's inline in the page
editor and the bundle purchase in the desk (docs/screenshots/bundle-*.png).

    pytest --ds=tests.settings_emulator tests/test_bundles_browser.py
"""

from __future__ import annotations

import time

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory
from tests.screenshots import SCREENSHOTS
from tests.test_bundles import include
from tests.test_checkout_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_receipt_browser import pytestmark as receipt_marks
from tests.test_receipt_browser import shop  # noqa: F401  (a fixture)
from tests.test_shop_desk import url
from tests.test_shop_desk_browser import full_screenshot
from wagtail_paid_delivery.models import DownloadEvent, Purchase

pytestmark = receipt_marks


@pytest.fixture(autouse=True)
def _needs_chromium(chromium_path):
    return chromium_path


def test_buyer_gets_every_included_product_and_the_editor_sees_the_bundle(
    shop,  # noqa: F811
    settings,
    admin_user,
    transactional_db,
):
    from playwright.sync_api import sync_playwright

    live_server, guide = shop
    settings.WAGTAIL_PAID_DELIVERY = {**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_OPTIONS": {}}
    home = guide.get_parent()
    songs = ProductPageFactory(parent=home, title="Dawn chorus recordings", files=0)
    recording = ContentFile(b"y" * 4096, name="dawn-chorus.mp3")
    ProductFileFactory(page=songs, title="Dawn chorus (MP3)", file=recording)
    bundle = ProductPageFactory(
        parent=home,
        title="Birdwatcher's bundle",
        intro="The field guide and the dawn chorus recordings, together for less.",
        price_amount=1800,
        files=0,
    )
    include(bundle, guide, songs)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(live_server.url + bundle.url)
            assert page.get_by_role("heading", name="Included in this bundle").is_visible()
            page.screenshot(path=str(SCREENSHOTS / "bundle-product-page.png"), full_page=True)

            page.get_by_role("button", name="Buy now for $18.00").click()
            page.wait_for_url("**/stripe-emulator/pay/**")
            page.get_by_label("Email").fill("ada@example.com")
            page.get_by_role("button", name="Pay $18.00").click()
            page.wait_for_url("**/shop/thanks/?session_id=cs_test_*")
            for _ in range(20):
                if page.get_by_text("Included in your bundle").count():
                    break
                time.sleep(0.25)
                page.reload()
            for title in ("Field guide to garden birds", "Dawn chorus recordings"):
                assert page.get_by_role("link", name=f"Download {title}").is_visible()
            page.screenshot(path=str(SCREENSHOTS / "bundle-success.png"), full_page=True)

            page.get_by_role("link", name="Download Dawn chorus recordings").click()
            page.wait_for_url("**/shop/d/**")
            assert page.locator("p.file-title", has_text="Dawn chorus (MP3)").is_visible()
            assert page.locator("p.file-title", has_text="Field guide").count() == 0
            page.screenshot(path=str(SCREENSHOTS / "bundle-download.png"), full_page=True)
            with page.expect_download() as download:
                page.get_by_role("button", name="Download Dawn chorus (MP3)").click()
            assert download.value.path().read_bytes() == b"y" * 4096
            assert DownloadEvent.objects.filter(outcome="served").count() == 1

            bought = Purchase.objects.get(bundle=None)
            assert Purchase.objects.filter(bundle=bought, status="paid").count() == 2

            client = Client()
            client.force_login(admin_user)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies(
                [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                        "url": live_server.url,
                    }
                ]
            )
            admin = context.new_page()
            admin.goto(live_server.url + reverse("wagtailadmin_pages:edit", args=[bundle.pk]))
            heading = admin.get_by_text("Included products (bundle)").first
            heading.scroll_into_view_if_needed()
            assert heading.is_visible()
            assert admin.get_by_text("Dawn chorus recordings").first.is_visible()
            full_screenshot(admin, "bundle-editor.png")

            admin.goto(live_server.url + url("inspect", bought.pk))
            assert admin.get_by_text("Included products").first.is_visible()
            full_screenshot(admin, "bundle-desk.png")
        finally:
            browser.close()
