"""A real browser buys a product with license keys and reads its key on the success page at 1280
and 390 px (saved as docs/screenshots/license-key-success-*.png).

    pytest --ds=tests.settings_emulator tests/test_license_keys_browser.py
"""

from __future__ import annotations

import time

import pytest

from tests.screenshots import SCREENSHOTS
from tests.test_checkout_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_license_keys import SIGNING_KEY, public_key
from tests.test_receipt_browser import pytestmark as receipt_marks
from tests.test_receipt_browser import shop  # noqa: F401  (a fixture)
from wagtail_paid_delivery import licenses
from wagtail_paid_delivery.models import Purchase

pytestmark = receipt_marks


@pytest.fixture(autouse=True)
def _needs_chromium(chromium_path):
    return chromium_path


def test_buyer_reads_the_license_key_on_the_success_page(shop, settings, transactional_db):  # noqa: F811
    from playwright.sync_api import sync_playwright

    live_server, product = shop
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_SIGNING_KEY": SIGNING_KEY,
        "CHECKOUT_OPTIONS": {},
    }
    type(product).objects.filter(pk=product.pk).update(license_activation_limit=3)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(live_server.url + product.url)
            page.get_by_role("button", name="Buy now for $12.50").click()
            page.wait_for_url("**/stripe-emulator/pay/**")
            page.get_by_label("Email").fill("ada@example.com")
            page.get_by_role("button", name="Pay $12.50").click()
            page.wait_for_url("**/shop/thanks/?session_id=cs_test_*")
            for _ in range(20):
                if page.get_by_text("Thank you for your purchase").count():
                    break
                time.sleep(0.25)
                page.reload()

            section = page.get_by_role("region", name="Your license key")
            assert section.is_visible()
            shown = section.locator("code").inner_text().strip()
            purchase = Purchase.objects.get()
            assert shown == licenses.key_text(purchase.license_key)
            assert licenses.verify_offline(shown, [public_key()]) is not None
            page.screenshot(path=str(SCREENSHOTS / "license-key-success-1280.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(SCREENSHOTS / "license-key-success-390.png"), full_page=True)
        finally:
            browser.close()
