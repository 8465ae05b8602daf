"""A real browser buys with a promotion code and tax, and reads the receipt on the success page
at 1280 and 390 px (saved as docs/screenshots/receipt-success-*.png).

Runs against pytest-django's live server with the sandbox's Stripe emulator, so the amounts and
the receipt URL travel as Stripe sends them.

    pytest --ds=tests.settings_emulator tests/test_receipt_browser.py
"""

from __future__ import annotations

import time

import pytest
from django.apps import apps
from django.core.files.base import ContentFile
from wagtail.models import Site

from tests.factories import ProductFileFactory, ProductPageFactory, home_page
from tests.screenshots import SCREENSHOTS
from tests.test_checkout_browser import CHROMIUM, CHROMIUM_ARGS
from wagtail_paid_delivery import stripe_api
from wagtail_paid_delivery.models import Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not apps.is_installed("sandbox.stripe_emulator"),
        reason="needs the sandbox's Stripe emulator: pytest --ds=tests.settings_emulator",
    ),
]


@pytest.fixture(autouse=True)
def _needs_chromium(chromium_path):
    return chromium_path


@pytest.fixture
def shop(live_server, settings, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STRIPE_API_BASE": f"{live_server.url}/stripe-emulator",
        "CHECKOUT_OPTIONS": {"allow_promotion_codes": True, "automatic_tax": True},
        "ORDER_NUMBER_PREFIX": "FG-",
    }
    settings.SANDBOX_URL = live_server.url  # where the emulator's receipt pages are
    stripe_api.reset_clients()
    home = home_page()  # before the site's address: it may create the site
    host, port = live_server.url.removeprefix("http://").split(":")
    Site.objects.filter(is_default_site=True).update(hostname=host, port=int(port))
    product = ProductPageFactory(
        parent=home,
        title="Field guide to garden birds",
        intro="Two hundred pages of birds, with songs to download.",
        price_amount=1250,
        files=0,
    )
    for title, name in (("Field guide (PDF)", "guide.pdf"), ("Bird songs (MP3)", "songs.zip")):
        ProductFileFactory(page=product, title=title, file=ContentFile(b"x" * 2048, name=name))
    yield live_server, product
    stripe_api.reset_clients()


def test_buyer_reads_the_receipt_on_the_success_page(shop, transactional_db):
    from playwright.sync_api import sync_playwright

    live_server, product = shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            blocked = []
            page.on(
                "console",
                lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.goto(live_server.url + product.url)
            page.get_by_role("button", name="Buy now for $12.50").click()
            page.wait_for_url("**/stripe-emulator/pay/**")
            page.get_by_label("Email").fill("ada@example.com")
            page.get_by_label("Promotion code").fill("SANDBOX20")
            page.get_by_role("button", name="Pay $12.50").click()
            page.wait_for_url("**/shop/thanks/?session_id=cs_test_*")
            for _ in range(20):
                if page.get_by_text("Thank you for your purchase").count():
                    break
                time.sleep(0.25)
                page.reload()

            receipt = page.get_by_role("region", name="Receipt")
            assert receipt.is_visible()
            purchase = Purchase.objects.get()
            assert purchase.order_number.startswith("FG-")
            text = " ".join(receipt.inner_text().split())
            assert f"Order number {purchase.order_number}" in text
            assert "Subtotal $12.50 Discount −$2.50 Tax $1.00 Total paid $11.00" in text
            assert "Field guide (PDF)" in text and "Bird songs (MP3)" in text
            link = receipt.get_by_role("link", name="Stripe's receipt for this payment")
            assert link.get_attribute("href") == purchase.receipt_url
            # The receipt's styles carry the page's nonce: nothing was blocked.
            assert blocked == []
            assert receipt.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"
            page.screenshot(path=str(SCREENSHOTS / "receipt-success-1280.png"), full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})
            page.reload()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(SCREENSHOTS / "receipt-success-390.png"), full_page=True)

            # Stripe's receipt opens (the emulator's stands in for pay.stripe.com).
            page.goto(purchase.receipt_url)
            assert page.get_by_text("SANDBOX20").is_visible()
        finally:
            browser.close()
