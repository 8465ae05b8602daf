"""Screenshots of a running sandbox for the docs, in headless Chromium: a buyer's walk.

    python sandbox/screenshots.py [BASE_URL] [OUT_DIR]

Defaults: http://127.0.0.1:$SANDBOX_PORT and docs/screenshots/. Needs /usr/bin/chromium (or
CHROMIUM set to another binary) and Python playwright (installed with the [test] extra). Run it
on the machine the sandbox runs on: it reads the sandbox's mail folder (sandbox/var/mail/, or
SANDBOX_MAIL) and runs ``sandbox/manage.py expire_link`` with the same environment.

Besides the home and product pages it walks as a buyer would, in a browser set to Berlin time,
and shoots each step at 1280 and 390 px (walk-<n>-<what>-{1280,390}.png; the success and
download pages also as shop-success-*.png and shop-download-*.png, with the emulator's receipt
and dashboard as emulator-receipt-*.png and emulator-dashboard-*.png):

1. buy the field guide on the emulator's hosted page;
2. read the receipt on the success page;
3. open the download page and press "Download all" (the ZIP is saved and opened);
4. let the link expire (``manage.py expire_link``: the sandbox has no clock) and open it again;
5. get back in through ``library/`` by email alone: the sign-in email from the mail folder, its
   button, the library, a fresh link from it;
6. refund in full on the emulator's dashboard: the link and the success page after the webhook;
7. buy the sample pack by bank debit and let the debit fail on the dashboard: the pending page,
   the payment-failed page and the email that says so.

Each run is a new purchase (two with step 7) by ada@example.com; the library lists earlier runs'
purchases too (``make clean-sandbox`` starts again from nothing).
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

SANDBOX = Path(__file__).resolve().parent
PAGES = {"home.png": "/", "product.png": "/field-guide/"}
WIDTHS = {1280: 900, 390: 844}
BUYER = "ada@example.com"
#: What the filebased mail backend writes after each message.
MAIL_SEPARATOR = b"\n" + b"-" * 79 + b"\n"
#: Webhooks and the task cluster's emails arrive a moment after the click that caused them.
PATIENCE = 30.0


@dataclass
class Walk:
    page: Page
    base: str
    out: Path
    mail: Path

    def shoot(self, name: str, prefix: str = "walk-") -> None:
        """The page as it is now, at each width (resized, not reloaded: a POST's answer too)."""
        for width, height in WIDTHS.items():
            self.page.set_viewport_size({"width": width, "height": height})
            self.page.wait_for_timeout(150)
            path = self.out / f"{prefix}{name}-{width}.png"
            self.page.screenshot(path=str(path), full_page=True)
            print(path)
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def goto(self, path_or_url: str) -> None:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        self.page.goto(url, wait_until="networkidle")

    def show_email(self, html: str) -> None:
        """An email's HTML part as a mail client shows it: in a blank page, so the shop page's
        strict CSP (which blocks inline styles) does not carry over to it."""
        self.page.goto("about:blank")
        self.page.set_content(html)

    def until(self, ready: Callable[[], bool], what: str) -> None:
        """Reload until ``ready()`` holds: the shop learns of payments by webhook."""
        deadline = time.monotonic() + PATIENCE
        while not ready():
            if time.monotonic() > deadline:
                raise SystemExit(f"Gave up waiting for {what} at {self.page.url}")
            self.page.wait_for_timeout(1000)
            self.page.reload(wait_until="networkidle")

    def mail_html(self, since: float, subject_has: str) -> str:
        """The HTML part of the newest email written since ``since`` whose subject has the
        words, waiting for the task cluster to send it."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            for message in reversed(read_mail(self.mail, since)):
                if subject_has in str(message["Subject"]) and BUYER in str(message["To"]):
                    return message.get_body(("html",)).get_content()
            time.sleep(1)
        raise SystemExit(f"No email with {subject_has!r} in {self.mail}")

    def session_on_dashboard(self, session_id: str, button: str) -> None:
        """Press a button on the emulator's dashboard for this Checkout Session."""
        self.goto("/stripe-emulator/")
        row = self.page.locator("tbody tr", has_text=session_id[-10:])
        row.get_by_role("button", name=button).click()
        self.page.wait_for_load_state("networkidle")


def read_mail(folder: Path, since: float) -> list[email.message.EmailMessage]:
    """Every message in the files written since ``since``, oldest first."""
    if not folder.is_dir():
        return []
    files = sorted(
        (f for f in folder.iterdir() if f.stat().st_mtime >= since), key=os.path.getmtime
    )
    messages = []
    for file in files:
        for raw in file.read_bytes().split(MAIL_SEPARATOR):
            if raw.strip():
                messages.append(email.message_from_bytes(raw, policy=email.policy.default))
    return messages


def session_id(success_url: str) -> str:
    return parse_qs(urlsplit(success_url).query)["session_id"][0]


def step_1_buy(walk: Walk, product: str, pay: str) -> str:
    """The product page, the emulator's hosted page filled in, then pay: the success page's URL."""
    walk.goto(product)
    walk.page.get_by_role("button", name="Buy now").click()
    walk.page.wait_for_load_state("networkidle")
    walk.page.fill("#email", BUYER)
    if pay == "Pay":
        walk.shoot("1-checkout")
        walk.page.locator("button.pay").click()
    else:
        walk.page.get_by_role("button", name=pay).click()
    walk.page.wait_for_url("**/thanks/**")
    walk.page.wait_for_load_state("networkidle")
    return walk.page.url


def step_2_receipt(walk: Walk) -> str:
    """The success page once the webhook is in: the receipt. Returns the order number."""
    to_downloads = walk.page.get_by_role("link", name="Go to your downloads")
    walk.until(lambda: to_downloads.count() > 0, "the paid success page")
    walk.shoot("2-receipt")
    walk.shoot("shop-success", prefix="")
    return walk.page.locator(".pd-receipt-number").first.inner_text().strip()


def step_3_download_all(walk: Walk) -> str:
    """The download page, then "Download all": the ZIP must open. Returns the link's URL."""
    walk.page.get_by_role("link", name="Go to your downloads").click()
    walk.page.wait_for_load_state("networkidle")
    link = walk.page.url
    walk.shoot("3-download")
    walk.shoot("shop-download", prefix="")
    with walk.page.expect_download() as info:
        walk.page.get_by_role("button", name="Download all").click()
    download = info.value
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / download.suggested_filename
        download.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            if archive.testzip() is not None:
                raise SystemExit(f"{download.suggested_filename}: a member fails its CRC-32")
            print(f"{download.suggested_filename}: {', '.join(archive.namelist())}")
    walk.page.wait_for_timeout(500)  # the downloads-left counts update without a reload
    walk.shoot("3-downloaded")
    return link


def emulator_pages(walk: Walk, receipt: str) -> None:
    """The emulator's own pages: Stripe's receipt for the payment, and the dashboard."""
    walk.goto(receipt)
    walk.shoot("emulator-receipt", prefix="")
    walk.goto("/stripe-emulator/")
    walk.shoot("emulator-dashboard", prefix="")


def step_4_expire(walk: Walk, order_number: str, link: str) -> None:
    """No clock to move forward: the sandbox's own command ends the link now."""
    subprocess.run(
        [sys.executable, str(SANDBOX / "manage.py"), "expire_link", order_number], check=True
    )
    walk.goto(link)
    walk.shoot("4-expired")


def step_5_library(walk: Walk) -> str:
    """library/ by email alone, from the shop's menu: the form, the email, its sign-in page,
    the list, a fresh link. Returns the fresh link's URL."""
    walk.goto("/")
    walk.page.get_by_role("navigation", name="Main").get_by_role(
        "link", name="Your downloads"
    ).click()
    walk.page.wait_for_load_state("networkidle")
    walk.page.fill("input[type=email]", BUYER)
    walk.shoot("5-library-email")
    since = time.time() - 1
    walk.page.locator("form", has=walk.page.locator("input[type=email]")).locator("button").click()
    walk.page.wait_for_load_state("networkidle")
    walk.shoot("5-library-check-email")
    walk.show_email(walk.mail_html(since, "Sign in to your downloads"))
    walk.shoot("5-library-sign-in-email")
    walk.page.get_by_role("link", name="Open my downloads").click()
    walk.page.wait_for_load_state("networkidle")
    walk.shoot("5-library-sign-in")
    walk.page.get_by_role("button", name="Open my downloads").click()
    walk.page.wait_for_load_state("networkidle")
    walk.shoot("5-library")
    walk.page.get_by_role("button", name="Get download link").first.click()
    walk.page.wait_for_load_state("networkidle")
    walk.shoot("5-library-link")
    return walk.page.url


def step_6_refund(walk: Walk, success: str, link: str) -> None:
    """Refund in full on the emulator's dashboard; the link and the success page say so."""
    walk.session_on_dashboard(session_id(success), "Refund in full")
    walk.goto(link)
    refunded = walk.page.get_by_role("heading", name="This purchase was refunded")
    walk.until(lambda: refunded.count() > 0, "the refund's webhook")
    walk.goto("/stripe-emulator/")  # once the shop has it: both sides say refunded
    walk.shoot("6-refund")
    walk.goto(link)
    walk.shoot("6-refunded-link")
    walk.goto(success)
    walk.shoot("6-refunded-success")


def step_7_failed_debit(walk: Walk) -> None:
    """Pay the sample pack by bank debit, then the debit fails: pending, failed, the email."""
    success = step_1_buy(walk, "/sample-pack/", "Pay later (bank debit)")
    walk.shoot("7-pending")
    since = time.time() - 1
    walk.session_on_dashboard(session_id(success), "Debit fails")
    walk.goto(success)
    failed = walk.page.get_by_role("heading", name="The payment did not go through")
    walk.until(lambda: failed.count() > 0, "the failed debit's webhook")
    walk.goto("/stripe-emulator/")
    walk.shoot("7-debit-fails")
    walk.goto(success)
    walk.shoot("7-payment-failed")
    walk.show_email(walk.mail_html(since, "did not go through"))
    walk.shoot("7-payment-failed-email")


def buyers_walk(browser, base: str, out: Path, mail: Path) -> None:
    """Steps 1 to 7, in one browser context: the one that paid (the success page is bound to it)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        timezone_id="Europe/Berlin",
        locale="en-GB",
        accept_downloads=True,
    )
    walk = Walk(context.new_page(), base, out, mail)
    success = step_1_buy(walk, "/field-guide/", "Pay")
    order_number = step_2_receipt(walk)
    receipt = walk.page.get_by_role("link", name="Stripe's receipt for this payment")
    receipt_url = receipt.get_attribute("href")
    link = step_3_download_all(walk)
    emulator_pages(walk, receipt_url)
    step_4_expire(walk, order_number, link)
    fresh_link = step_5_library(walk)
    step_6_refund(walk, success, fresh_link)
    step_7_failed_debit(walk)
    context.close()


def main() -> None:
    port = os.environ.get("SANDBOX_PORT") or "8000"
    base = (sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{port}").rstrip("/")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    mail = Path(os.environ.get("SANDBOX_MAIL") or SANDBOX / "var" / "mail")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        for filename, path in PAGES.items():
            page.goto(base + path, wait_until="networkidle")
            page.screenshot(path=str(out / filename), full_page=True)
            print(out / filename)
        buyers_walk(browser, base, out, mail)
        browser.close()


if __name__ == "__main__":
    main()
