"""Products that live on: a walk through a running sandbox in headless Chromium, for the docs.

    python sandbox/walk_products.py [BASE_URL] [OUT_DIR]

Defaults, requirements and the mail folder as for ``sandbox/screenshots.py`` (whose helpers it
uses). It also runs ``sandbox/manage.py shell`` with the same environment, to find page and
purchase ids. Each step is shot at 1280 px, buyer pages at 390 px too
(``live-<n>-<what>-{1280,390}.png``):

1. a buyer buys the Field Guide on the emulator;
2. the admin replaces the checklist's upload with a new file and release notes, ticks "Email
   past buyers", previews the update email and publishes;
3. the update email arrives (the cluster sends it in batches: a django-q2 schedule runs every
   minute); its link serves the new bytes (sha256 checked); with "past buyers get: the version
   they bought" the same link serves the old bytes;
4. the Shoreline Bundle: each included product's link downloads;
5. the Tide Clock's license key, from the success page: verified offline with the public key
   the admin shows, then activated, validated and deactivated through ``shop/licenses/``;
6. the Tide Clock again, paying more than its minimum (pay what you want);
7. "The winter chapter" (for buyers of the Field Guide) before buying, after signing in to the
   library, and after a refund.

Each run buys anew: steps 1 to 3 as ada+<time>@example.com, 4 to 6 as ada@example.com, 7 as
grace+<time>@example.com.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from playwright.sync_api import Page, sync_playwright
from screenshots import CHROMIUM_ARGS, SANDBOX, read_mail, session_id

BUYER = "ada@example.com"
#: Steps 1 to 3's past buyer: an address of its own each run, so its one purchase is the one
#: the update email links to, bought at the version current when the run starts.
PAST_BUYER = f"ada+{int(time.time())}@example.com"
PATIENCE = 30.0
#: The update batch schedule runs once a minute, and publishing queues the run first.
UPDATE_PATIENCE = 240.0
ADMIN = ("admin", "admin")
NEW_CHECKLIST = (
    b"Shoreline checklist, second edition\r\n====================================\r\n\r\n"
    b"[ ] Oystercatcher\r\n[ ] Turnstone\r\n[ ] Sanderling\r\n[ ] Curlew\r\n"
    b"[ ] Ringed plover\r\n[ ] Redshank\r\n[ ] Dunlin (new: winter visitor)\r\n"
)


def check(holds: bool, failure: str) -> None:
    """Stop the walk with a message when what it checks does not hold."""
    if not holds:
        raise SystemExit(failure)


def shell(code: str) -> str:
    """Run Python in the sandbox's Django (``manage.py shell -c``): its printed output."""
    result = subprocess.run(
        [sys.executable, str(SANDBOX / "manage.py"), "shell", "-c", code],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip().splitlines()[-1]


def page_id(slug: str) -> int:
    return int(
        shell(
            "from wagtail_paid_delivery.product.models import ProductPage;"
            f"print(ProductPage.objects.get(slug={slug!r}).pk)"
        )
    )


@dataclass
class Walk:
    page: Page
    base: str
    out: Path
    mail: Path
    #: The checklist's bytes as step 1's buyer got them (version 1 on a fresh sandbox).
    bought: bytes = b""
    #: The new upload: new bytes on every run, so a second run makes a version of its own.
    new_checklist: bytes = (
        NEW_CHECKLIST + time.strftime("\r\nEdition of %Y-%m-%d %H:%M:%S\r\n").encode()
    )

    def shoot(self, name: str, buyer_page: bool = True) -> None:
        widths = {1280: 900, 390: 844} if buyer_page else {1280: 900}
        for width, height in widths.items():
            self.page.set_viewport_size({"width": width, "height": height})
            self.page.wait_for_timeout(150)
            path = self.out / f"live-{name}-{width}.png"
            self.page.screenshot(path=str(path), full_page=True)
            print(path)
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def goto(self, path_or_url: str) -> None:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        self.page.goto(url, wait_until="networkidle")

    def until(self, ready, what: str, patience: float = PATIENCE) -> None:
        deadline = time.monotonic() + patience
        while not ready():
            if time.monotonic() > deadline:
                raise SystemExit(f"Gave up waiting for {what} at {self.page.url}")
            self.page.wait_for_timeout(1000)
            self.page.reload(wait_until="networkidle")

    def find_mail(self, since: float, to: str, subject_has: str, patience: float = PATIENCE):
        """The newest email to ``to`` since ``since`` whose subject has the words."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            for message in reversed(read_mail(self.mail, since)):
                if subject_has in str(message["Subject"]) and to in str(message["To"]):
                    return message
            time.sleep(1)
        raise SystemExit(f"No email with {subject_has!r} to {to} in {self.mail}")

    def show_email(self, message) -> None:
        self.page.goto("about:blank")
        self.page.set_content(message.get_body(("html",)).get_content())

    def buy(self, product: str, buyer: str, amount: str | None = None, shot: str = "") -> str:
        """Buy on the emulator's hosted page; waits for the paid success page. Its URL."""
        self.goto(product)
        self.page.locator("form button[type=submit]", has_text="Buy now").first.click()
        self.page.wait_for_load_state("networkidle")
        self.page.fill("#email", buyer)
        if amount is not None:
            self.page.fill("#amount", amount)
        if shot:
            self.shoot(shot)
        self.page.locator("button.pay").click()
        self.page.wait_for_url("**/thanks/**")
        self.page.wait_for_load_state("networkidle")
        paid = self.page.get_by_role("link", name="Go to your downloads")
        bundle = self.page.get_by_role("heading", name="Included in your bundle")
        self.until(lambda: paid.count() + bundle.count() > 0, "the paid success page")
        return self.page.url

    def download_first(self, file_title: str | None = None) -> bytes:
        """Press a file's Download button on the download page: the bytes served."""
        buttons = self.page.locator("form button[type=submit]", has_text="Download")
        button = buttons.filter(has_text=file_title).first if file_title else buttons.first
        with self.page.expect_download() as info:
            button.click()
        with tempfile.TemporaryDirectory() as folder:
            saved = Path(folder) / "file"
            info.value.save_as(saved)
            return saved.read_bytes()

    def admin_sign_in(self) -> None:
        self.goto("/admin/")
        if self.page.locator("#id_username").count() == 0:
            return  # signed in already
        self.page.fill("#id_username", ADMIN[0])
        self.page.fill("#id_password", ADMIN[1])
        self.page.locator("form button[type=submit]").first.click()
        self.page.wait_for_load_state("networkidle")

    def shoot_panel(self, name: str, heading: str) -> None:
        """One panel of the editor (the innermost section with this heading), at 1280 px."""
        title = self.page.locator("h2", has_text=heading)
        panel = self.page.locator("section", has=title).last
        panel.scroll_into_view_if_needed()
        path = self.out / f"live-{name}-1280.png"
        panel.screenshot(path=str(path))
        print(path)

    def publish(self) -> None:
        """The editor's "Publish" (in the footer's dropdown)."""
        # Waits for the answer: a request sent before it would see the page unpublished.
        with self.page.expect_navigation(wait_until="networkidle"):
            self.page.locator("button[name=action-publish]").dispatch_event("click")


def step_1_buy(walk: Walk) -> str:
    """A past buyer: the Field Guide, checklist version 1. The download link's URL."""
    walk.buy("/field-guide/", PAST_BUYER, shot="1-buy-field-guide")
    walk.page.get_by_role("link", name="Go to your downloads").click()
    walk.page.wait_for_load_state("networkidle")
    walk.shoot("1-download-v1")
    old = walk.bought = walk.download_first("Shoreline checklist")
    print(f"checklist as bought: sha256 {hashlib.sha256(old).hexdigest()}")
    return walk.page.url


def fill_new_version(walk: Walk, prefix: str) -> None:
    """The checklist's new upload and notes, and the update email's words."""
    # From memory: a file on disk must outlive the form (autosave and preview read it too).
    walk.page.set_input_files(
        f"input[name={prefix}-file]",
        {"name": "shoreline-checklist.txt", "mimeType": "text/plain", "buffer": walk.new_checklist},
    )
    walk.page.fill(f"textarea[name={prefix}-release_notes]", "Second edition: adds the dunlin.")
    walk.page.check("#id_past_buyers_get_0")  # the latest version (the default)
    walk.page.check("#id_notify_buyers")
    walk.page.fill("#id_update_subject", "The Shoreline checklist, second edition")
    walk.page.fill(
        "#id_update_message",
        "The checklist now has the dunlin, a winter visitor. Your link below has the new file.",
    )


def step_2_new_version(walk: Walk, field_guide: int) -> float:
    """Replace the checklist's upload, release notes, email past buyers, preview, publish."""
    walk.admin_sign_in()
    walk.goto(f"/admin/pages/{field_guide}/edit/")
    title = walk.page.locator("input[name$=-title][value='Shoreline checklist']")
    prefix = title.get_attribute("name").removesuffix("-title")
    fill_new_version(walk, prefix)
    walk.page.locator(f"textarea[name={prefix}-release_notes]").scroll_into_view_if_needed()
    walk.shoot("2-admin-new-version", buyer_page=False)
    walk.page.locator("#id_update_message").scroll_into_view_if_needed()
    walk.shoot("2-admin-notify", buyer_page=False)
    # The "Update email" preview mode: the form's data sent as the preview panel sends it,
    # then the mode opened in a tab of its own (the panel's "open in new tab").
    walk.page.evaluate(
        """async (url) => {
            const form = document.querySelector('#page-edit-form');
            await fetch(url, {method: 'POST', body: new FormData(form)});
        }""",
        f"/admin/pages/{field_guide}/edit/preview/",
    )
    preview = walk.page.context.new_page()
    preview.set_viewport_size({"width": 1280, "height": 900})
    preview.goto(
        f"{walk.base}/admin/pages/{field_guide}/edit/preview/?mode=update_email",
        wait_until="networkidle",
    )
    path = walk.out / "live-2-admin-preview-update-email-1280.png"
    preview.screenshot(path=str(path), full_page=True)
    print(path)
    preview.close()
    since = time.time() - 1
    walk.publish()
    walk.shoot("2-admin-published", buyer_page=False)
    walk.goto(f"/admin/pages/{field_guide}/edit/")
    walk.shoot_panel("2-admin-file-versions", "File versions")
    return since


def step_3_update_email(walk: Walk, since: float, field_guide: int) -> None:
    message = walk.find_mail(since, PAST_BUYER, "second edition", patience=UPDATE_PATIENCE)
    print(f"update email {time.time() - since:.0f} s after publishing: {message['Subject']}")
    print(f"List-Unsubscribe: {message['List-Unsubscribe']}")
    walk.show_email(message)
    walk.shoot("3-update-email")
    link = walk.page.locator("a[href*='/shop/d/']").first.get_attribute("href")
    walk.goto(link)
    walk.shoot("3-download-v2")
    new = walk.download_first("Shoreline checklist")
    check(new == walk.new_checklist, "the update email's link did not serve the new checklist")
    print(f"checklist from the update email: sha256 {hashlib.sha256(new).hexdigest()} (new)")
    walk.goto(f"/admin/pages/{field_guide}/edit/")
    walk.shoot_panel("3-admin-update-notices", "Update notices sent")
    # The other policy: past buyers keep the version they bought.
    walk.page.check("#id_past_buyers_get_1")
    walk.page.locator("#id_past_buyers_get_1").scroll_into_view_if_needed()
    walk.shoot("3-admin-policy-bought", buyer_page=False)
    walk.publish()
    walk.goto(link)
    walk.shoot("3-download-bought-version")
    old = walk.download_first("Shoreline checklist")
    check(old != walk.new_checklist, "under 'the version they bought' the link served the new file")
    check(old == walk.bought or not walk.bought, "the link did not serve the bytes bought")
    print(f"checklist under 'the version they bought': sha256 {hashlib.sha256(old).hexdigest()}")
    walk.goto(f"/admin/pages/{field_guide}/edit/")
    walk.page.check("#id_past_buyers_get_0")
    walk.publish()


def step_4_bundle(walk: Walk) -> None:
    walk.buy("/shoreline-bundle/", BUYER)
    walk.shoot("4-bundle-success")
    links = walk.page.locator("a.pd-button[href*='/shop/d/']")
    urls = [links.nth(i).get_attribute("href") for i in range(links.count())]
    check(len(urls) == 2, f"the bundle's success page has {len(urls)} download links")
    for n, url in enumerate(urls, 1):
        walk.goto(url)
        walk.shoot(f"4-bundle-download-{n}")
        data = walk.download_first()
        print(f"bundle product {n}: {walk.page.locator('h1').first.inner_text()}: {len(data)} B")


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 (the sandbox's own http URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def verify_offline(key: str, public_key_b64: str) -> tuple[int, str, int]:
    """What an app does: base32-decode, check Ed25519, read (product id, key id, issue day)."""
    raw = base64.b32decode("".join(key.split()).replace("-", ""))
    payload, signature = raw[:21], raw[21:]
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64)).verify(signature, payload)
    return int.from_bytes(payload[1:5]), payload[5:17].hex(), int.from_bytes(payload[17:21])


def step_5_license(walk: Walk) -> None:
    walk.buy("/tide-clock/", BUYER, amount="5.00")
    walk.shoot("5-license-success")
    key = walk.page.locator(".pd-license-key").first.inner_text().strip()
    walk.admin_sign_in()
    walk.goto("/admin/shop/purchases/")
    walk.page.locator("tbody tr", has_text="Tide Clock").first.locator("a").first.click()
    walk.page.wait_for_load_state("networkidle")
    public_key = walk.page.locator("code.wpd-break").last.inner_text().strip()
    walk.shoot("5-admin-purchase", buyer_page=False)
    shown = walk.page.locator("code.wpd-break").first.inner_text().strip()
    check(shown == key, "the desk shows another key than the success page")
    product_id, key_id, day = verify_offline(key, public_key)
    print(f"offline: signature good; product {product_id}, key id {key_id}, issued day {day}")
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    try:
        verify_offline(tampered, public_key)
        raise SystemExit("a tampered key verified offline")
    except (InvalidSignature, ValueError):
        print("offline: a tampered key fails")
    endpoint = walk.base + "/shop/licenses/"
    for body in (
        {"action": "activate", "key": key, "instance": "laptop-7f3a"},
        {"action": "validate", "key": key, "instance": "laptop-7f3a"},
        {"action": "deactivate", "key": key, "instance": "laptop-7f3a"},
        {"action": "activate", "key": key, "instance": "desktop-1"},
        {"action": "activate", "key": key, "instance": "desktop-2"},
        {"action": "activate", "key": key, "instance": "desktop-3"},  # two seats: refused
        {"action": "validate", "key": tampered},
    ):
        status, answer = post_json(endpoint, body)
        print(f"POST shop/licenses/ {body['action']}: {status} {json.dumps(answer)}")
    walk.page.reload(wait_until="networkidle")  # the desk lists the two activations
    walk.shoot_panel("5-admin-license", "License key")


def step_6_pay_what_you_want(walk: Walk) -> None:
    walk.goto("/tide-clock/")
    walk.shoot("6-pwyw-product")
    walk.buy("/tide-clock/", BUYER, amount="12.50", shot="6-pwyw-checkout")
    walk.shoot("6-pwyw-success")
    receipt = walk.page.locator(".pd-receipt, main").first.inner_text()
    check("$12.50" in receipt, "the success page does not show the amount chosen")
    print("pay what you want: paid $12.50 (minimum $5.00), plus the emulator's 10 % tax")


def library_sign_in(walk: Walk, buyer: str) -> None:
    walk.goto("/shop/library/")
    walk.page.fill("input[type=email]", buyer)
    since = time.time() - 1
    walk.page.locator("form", has=walk.page.locator("input[type=email]")).locator("button").click()
    walk.page.wait_for_load_state("networkidle")
    walk.show_email(walk.find_mail(since, buyer, "Sign in to your downloads"))
    walk.page.get_by_role("link", name="Open my downloads").click()
    walk.page.wait_for_load_state("networkidle")
    walk.page.get_by_role("button", name="Open my downloads").click()
    walk.page.wait_for_load_state("networkidle")


def step_7_buyers_only(walk: Walk) -> None:
    buyer = f"grace+{int(time.time())}@example.com"
    walk.goto("/winter-chapter/")
    walk.shoot("7-winter-chapter-before")
    success = walk.buy("/field-guide/", buyer)
    library_sign_in(walk, buyer)
    walk.goto("/winter-chapter/")
    walk.shoot("7-winter-chapter-buyer")
    walk.goto("/birding-notes/")
    walk.shoot("7-birding-notes-buyer")
    walk.goto("/stripe-emulator/")
    row = walk.page.locator("tbody tr", has_text=session_id(success)[-10:])
    row.get_by_role("button", name="Refund in full").click()
    walk.page.wait_for_load_state("networkidle")
    walk.goto("/winter-chapter/")
    chapter = walk.page.get_by_text("When the easterlies come")
    walk.until(lambda: chapter.count() == 0, "the refund to close the chapter")
    walk.shoot("7-winter-chapter-refunded")


def main() -> None:
    port = os.environ.get("SANDBOX_PORT") or "8000"
    base = (sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{port}").rstrip("/")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    mail = Path(os.environ.get("SANDBOX_MAIL") or SANDBOX / "var" / "mail")
    only = set(os.environ.get("WALK_STEPS", "1234567"))
    field_guide = page_id("field-guide")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )

        def new_walk() -> Walk:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900},
                timezone_id="Europe/Berlin",
                locale="en-GB",
                accept_downloads=True,
            )
            return Walk(context.new_page(), base, out, mail)

        walk = new_walk()
        if "1" in only:
            step_1_buy(walk)
        # Step 3 alone reads the update email of a publish in the last ten minutes.
        since = step_2_new_version(walk, field_guide) if "2" in only else time.time() - 600
        if "3" in only:
            if "2" not in only:
                walk.admin_sign_in()
            step_3_update_email(walk, since, field_guide)
        if "4" in only:
            step_4_bundle(walk)
        if "5" in only:
            step_5_license(walk)
        if "6" in only:
            step_6_pay_what_you_want(walk)
        if "7" in only:
            step_7_buyers_only(new_walk())
        browser.close()


if __name__ == "__main__":
    main()
