"""A real browser buys a product: Buy button → emulator's hosted page → Pay → success page.

Runs against pytest-django's live server with the sandbox's Stripe emulator (so stripe-python and
the signed webhook both travel over real HTTP), and saves docs/screenshots/checkout-*.png.

    pytest --ds=tests.settings_emulator tests/test_checkout_browser.py
"""

from __future__ import annotations

import os
import re
import time

import pytest
from django.apps import apps
from wagtail.models import Site

from tests.factories import ProductPageFactory, home_page
from tests.screenshots import SCREENSHOTS
from wagtail_paid_delivery import stripe_api
from wagtail_paid_delivery.models import Purchase

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    # live_server flushes the database afterwards; restore the migrated rows (root page, content
    # types) as every other transactional test here does, or later tests find them missing.
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not apps.is_installed("sandbox.stripe_emulator"),
        reason="needs the sandbox's Stripe emulator: pytest --ds=tests.settings_emulator",
    ),
]


@pytest.fixture(autouse=True)
def _needs_chromium(chromium_path):
    # Skips with the reason when Chromium is missing; fails under WPD_REQUIRE_SYSTEM_DEPS=1.
    return chromium_path


@pytest.fixture
def shop(live_server, settings, monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls here are plain
    # blocking calls made between browser steps.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STRIPE_API_BASE": f"{live_server.url}/stripe-emulator",
    }
    stripe_api.reset_clients()
    home = home_page()
    host, port = live_server.url.removeprefix("http://").split(":")
    Site.objects.filter(is_default_site=True).update(hostname=host, port=int(port))
    product = ProductPageFactory(
        parent=home,
        title="Field guide to garden birds",
        intro="Two hundred pages of birds, with songs to download.",
        price_amount=1250,
        files=2,
    )
    yield live_server, product
    stripe_api.reset_clients()


def test_buyer_buys_in_a_real_browser(shop, transactional_db):
    from playwright.sync_api import sync_playwright

    live_server, product = shop
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(live_server.url + product.url)
            button = page.get_by_role("button", name="Buy now for $12.50")
            assert button.is_enabled()
            page.screenshot(path=str(SCREENSHOTS / "checkout-product.png"), full_page=True)

            button.click()
            page.wait_for_url("**/stripe-emulator/pay/**")
            assert page.get_by_text("Stripe emulator — no real payment").is_visible()
            page.get_by_label("Email").fill("ada@example.com")
            page.screenshot(path=str(SCREENSHOTS / "checkout-emulator.png"), full_page=True)

            page.get_by_role("button", name="Pay $12.50").click()
            page.wait_for_url("**/shop/thanks/?session_id=cs_test_*")
            # The webhook travels in a thread; the page may have settled it itself already.
            for _ in range(20):
                if page.get_by_text("Thank you for your purchase").count():
                    break
                time.sleep(0.25)
                page.reload()
            assert page.get_by_role("heading", name="Thank you for your purchase").is_visible()
            page.screenshot(path=str(SCREENSHOTS / "checkout-success.png"), full_page=True)
        finally:
            browser.close()

    purchase = Purchase.objects.get()
    assert purchase.status == Purchase.Status.PAID
    assert purchase.email == "ada@example.com"


def _emulated_sessions() -> int:
    from sandbox.stripe_emulator.models import EmulatedSession

    return EmulatedSession.objects.count()


def test_a_double_click_on_buy_starts_one_checkout_session(shop, transactional_db):
    from playwright.sync_api import sync_playwright

    live_server, product = shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            posts = []
            page.on(
                "request",
                lambda r: posts.append(r.post_data or "") if r.method == "POST" else None,
            )
            page.goto(live_server.url + product.url)
            page.get_by_role("button", name="Buy now for $12.50").dblclick()
            page.wait_for_url("**/stripe-emulator/pay/**")
        finally:
            browser.close()

    assert posts and all(re.fullmatch(r"checkout_nonce=[0-9a-f]{32}", body) for body in posts)
    assert len(set(posts)) == 1  # every POST of the click carries the same nonce
    assert Purchase.objects.count() == 1
    assert _emulated_sessions() == 1


def test_two_posts_from_one_page_at_once_and_no_cookie_start_one_checkout_session(
    shop, transactional_db
):
    # The button's own guard lets one POST through; a browser retry or a second submission it
    # misses sends another. Here the page's script fills the nonce (a submit event, as a click
    # makes) and the page then sends the form twice at the same moment, before any cookie.
    from playwright.sync_api import sync_playwright

    live_server, product = shop
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(live_server.url + product.url)
            page.wait_for_load_state("load")  # checkout.js is deferred
            result = page.evaluate(
                """async () => {
                    const form = document.querySelector("form[data-pd-checkout]");
                    form.dispatchEvent(new Event("submit", {cancelable: true}));
                    const nonce = form.elements.checkout_nonce.value;
                    const send = () => fetch(form.action, {
                        method: "POST", body: new FormData(form), redirect: "manual",
                    });
                    const answers = await Promise.all([send(), send()]);
                    return {nonce, types: answers.map((a) => a.type)};
                }"""
            )
            cookies = page.context.cookies()
        finally:
            browser.close()

    assert re.fullmatch(r"[0-9a-f]{32}", result["nonce"])
    assert result["types"] == ["opaqueredirect", "opaqueredirect"]  # both 303 to Stripe
    assert Purchase.objects.count() == 1
    assert _emulated_sessions() == 1
    assert [c["name"] for c in cookies] == ["wpd_checkout"]
