"""Screenshots of a running sandbox for the docs, in headless Chromium.

    python sandbox/screenshots.py [BASE_URL] [OUT_DIR]

Defaults: http://127.0.0.1:$SANDBOX_PORT and docs/screenshots/. Needs /usr/bin/chromium (or
CHROMIUM set to another binary) and Python playwright (installed with the [test] extra).

Besides the home and product pages it buys the field guide on the emulator's hosted page (a new
paid purchase each run) and takes the success and download pages, in the sandbox's own layout,
at 1280 and 390 px (shop-success-*.png, shop-download-*.png), in a browser set to Berlin time, with
the emulator's receipt and dashboard at the same widths (emulator-receipt-*.png,
emulator-dashboard-*.png).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PAGES = {"home.png": "/", "product.png": "/field-guide/"}
WIDTHS = {1280: 900, 390: 844}


def shop_pages(browser, base: str, out: Path) -> None:
    """Buy the field guide, then the success and download pages at each width."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="Europe/Berlin", locale="en-GB"
    )
    page = context.new_page()
    page.goto(base + "/field-guide/", wait_until="networkidle")
    page.get_by_role("button", name="Buy now").click()
    page.wait_for_load_state("networkidle")
    page.fill("#email", "ada@example.com")
    page.locator("button.pay").click()
    page.wait_for_url("**/thanks/**")
    to_downloads = page.get_by_role("link", name="Go to your downloads")
    for _ in range(10):  # the webhook may be a moment behind the redirect
        if to_downloads.count():
            break
        page.wait_for_timeout(1500)
        page.reload(wait_until="networkidle")
    success = page.url
    receipt = page.get_by_role("link", name="Stripe's receipt for this payment").get_attribute(
        "href"
    )
    to_downloads.click()
    page.wait_for_load_state("networkidle")
    pages = {
        "shop-success": success,
        "shop-download": page.url,
        "emulator-receipt": receipt,
        "emulator-dashboard": base + "/stripe-emulator/",
    }
    for width, height in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        for name, url in pages.items():
            page.goto(url, wait_until="networkidle")
            page.screenshot(path=str(out / f"{name}-{width}.png"), full_page=True)
            print(out / f"{name}-{width}.png")
    context.close()


def main() -> None:
    port = os.environ.get("SANDBOX_PORT") or "8000"
    base = sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{port}"
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        for filename, path in PAGES.items():
            page.goto(base.rstrip("/") + path, wait_until="networkidle")
            page.screenshot(path=str(out / filename), full_page=True)
            print(out / filename)
        shop_pages(browser, base.rstrip("/"), out)
        browser.close()


if __name__ == "__main__":
    main()
