"""Screenshots of a running sandbox for the docs, in headless Chromium.

    python sandbox/screenshots.py [BASE_URL] [OUT_DIR]

Defaults: http://127.0.0.1:$SANDBOX_PORT and docs/screenshots/. Needs /usr/bin/chromium (or
CHROMIUM set to another binary) and Python playwright (installed with the [test] extra).
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
        browser.close()


if __name__ == "__main__":
    main()
