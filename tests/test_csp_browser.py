"""In real Chromium: a site's scripts cannot read a token from a delivery page (issue 11).

The site's layout is played by template overrides (a DIRS template extending the app's own) that
add what a real base template adds: an inline analytics snippet reading ``location.href``, a
third-party tag, an ``onerror`` handler, a ``javascript:`` link, a ``<base>`` and a pixel from
another origin, and the site's own inline script carrying ``request.csp_nonce``. A little HTTP
server on another origin stands for the third parties and records whatever reaches it.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.test import Client, override_settings
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.test_download_browser import in_thread
from tests.test_success_page import start_checkout
from wagtail_paid_delivery import binding, links, serving
from wagtail_paid_delivery.models import DownloadLink, FileDownloadCount

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

DATA = b"%PDF-1.4 atlas\n" + bytes(range(256)) * 100

SITE_SNIPPETS = """
<base href="{other}/">
<script>
  document.documentElement.setAttribute("data-inline-ran", location.href);
  fetch("{other}/inline?u=" + encodeURIComponent(location.href));
</script>
<script src="{other}/tag.js"></script>
<link rel="stylesheet" href="{other}/theme.css">
<img src="{other}/pixel.gif" alt="">
<img src="/no-such-image.png" alt=""
  onerror="document.documentElement.setAttribute('data-handler-ran', '1')">
<iframe src="{other}/frame" title="chat"></iframe>
<a id="js-link" href="javascript:document.documentElement.setAttribute('data-js-url-ran','1')">x</a>
<script nonce="{{{{ request.csp_nonce }}}}">
  document.documentElement.setAttribute("data-own-script", "ran");
</script>
"""

# The download page (and the refused pages, which extend it) get the snippets in their <head>;
# base.html (the success page's layout) in its header block.
OVERRIDES = {
    "wagtail_paid_delivery/download.html": (
        '{% extends "wagtail_paid_delivery/download.html" %}'
        '{% block extra_head %}{% include "site_snippets.html" %}{% endblock %}'
    ),
    "wagtail_paid_delivery/base.html": (
        '{% extends "wagtail_paid_delivery/base.html" %}'
        '{% block header %}{% include "site_snippets.html" %}{% endblock %}'
    ),
}


class OtherOrigin:
    """Analytics, a tag manager, a CDN: another origin that records every request it gets.

    Under ``/bucket/`` it also plays a presigned storage, answering with the file's bytes.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                origin.paths.append(self.path)
                if self.path.startswith("/bucket/"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/pdf")
                    self.send_header("Content-Disposition", 'attachment; filename="atlas.pdf"')
                    self.send_header("Content-Length", str(len(DATA)))
                    self.end_headers()
                    self.wfile.write(DATA)
                    return
                body = b"document.documentElement.setAttribute('data-tag-ran','1')"
                self.send_response(200)
                self.send_header("Content-Type", "text/javascript")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def other_origin():
    origin = OtherOrigin()
    yield origin
    origin.close()


@pytest.fixture
def site_layout(tmp_path, other_origin):
    """The site's template overrides, in front of the app's templates."""
    for name, text in {
        **OVERRIDES,
        "site_snippets.html": SITE_SNIPPETS.format(other=other_origin.url),
    }.items():
        path = tmp_path / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    templates = [{**django_settings.TEMPLATES[0], "DIRS": [str(tmp_path / "templates")]}]
    with override_settings(TEMPLATES=templates):
        yield


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Star atlas", files=0)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(DATA, name="atlas.pdf"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    return issued, file


def attribute(page, name):
    return page.evaluate(f"document.documentElement.getAttribute({name!r})")


def assert_site_scripts_blocked(page, other_origin, console):
    page.click("#js-link")
    page.wait_for_timeout(300)
    for name in ("data-inline-ran", "data-tag-ran", "data-handler-ran", "data-js-url-ran"):
        assert attribute(page, name) is None, name
    assert attribute(page, "data-own-script") == "ran"  # the site's nonce'd script runs
    assert other_origin.paths == []  # nothing (not even a request) reached the other origin
    assert any("Content Security Policy" in message for message in console)


def test_site_scripts_cannot_read_the_token_on_the_download_and_refused_pages(
    bought, site_layout, other_origin, live_server, headless_chromium
):
    issued, file = bought
    url = live_server.url + reverse("wagtail_paid_delivery:download", args=[issued.token])
    context = headless_chromium.new_context(accept_downloads=True)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    response = page.goto(url)
    assert response.status == 200
    assert "script-src 'nonce-" in response.headers["content-security-policy"]
    assert_site_scripts_blocked(page, other_origin, console)
    # The page's own styles still apply: the nonce'd <style> and the class-based hidden label.
    button = page.get_by_role("button", name="Download Atlas")
    assert button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(59, 79, 216)"
    hidden = page.locator(".visually-hidden").first
    assert hidden.evaluate("e => getComputedStyle(e).position") == "absolute"

    # form-action 'self' lets the button through: 303 to the hand-off, the bytes.
    with page.expect_download() as info:
        button.click()
    assert Path(info.value.path()).read_bytes() == DATA

    in_thread(
        lambda: DownloadLink.objects.filter(pk=issued.link.pk).update(
            expires_at=issued.link.created_at
        )
    )
    console.clear()
    response = page.goto(url)
    assert response.status == 410
    assert page.get_by_text("This link has expired").is_visible()
    assert_site_scripts_blocked(page, other_origin, console)
    field = page.locator("#pd-resend-email")
    assert field.evaluate("e => getComputedStyle(e).borderTopLeftRadius") == "8px"
    context.close()


@pytest.fixture
def pending_checkout(home, fake_stripe):
    """A checkout started by a browser (its binding cookie), still pending at Stripe."""
    product = ProductPageFactory(parent=home, title="Field guide", price_amount=1250)
    client = Client()
    purchase = start_checkout(client, product)
    return purchase.stripe_checkout_session_id, client.cookies[binding.COOKIE_NAME].value


def test_success_page_runs_site_scripts_until_it_shows_a_link(
    pending_checkout, fake_stripe, site_layout, other_origin, live_server, headless_chromium
):
    session_id, cookie = pending_checkout
    url = live_server.url + reverse("wagtail_paid_delivery:success") + f"?session_id={session_id}"
    context = headless_chromium.new_context()
    host = live_server.url.split("//", 1)[1].split(":", 1)[0]
    context.add_cookies(
        [{"name": binding.COOKIE_NAME, "value": cookie, "domain": host, "path": "/"}]
    )
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    # Pending: no token on the page, no policy: the site's snippet runs (so it can fail below).
    response = page.goto(url)
    assert response.status == 200 and "content-security-policy" not in response.headers
    assert page.get_by_text("Your payment is processing").is_visible()
    deadline = time.monotonic() + 5
    while "/tag.js" not in other_origin.paths and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert attribute(page, "data-inline-ran") == url
    assert "/tag.js" in other_origin.paths

    # Paid: the page shows the download link, and the same snippet is blocked.
    in_thread(lambda: fake_stripe.pay(session_id, email="ada@example.com"))
    other_origin.paths.clear()
    console.clear()
    response = page.goto(url)
    assert "script-src 'nonce-" in response.headers["content-security-policy"]
    link = page.get_by_role("link", name="Go to your downloads")
    assert "/shop/d/" in link.get_attribute("href")
    assert_site_scripts_blocked(page, other_origin, console)
    # The layout's stylesheet (STATIC_URL, 'self') still applies.
    card = page.locator(".pd-card")
    assert card.evaluate("e => getComputedStyle(e).borderTopLeftRadius") == "12px"
    context.close()


class BucketStorage(FileSystemStorage):
    """A presigning storage on another origin (the OtherOrigin server's /bucket/)."""

    base_url_for_test = ""

    def url(self, name, parameters=None, expire=None, http_method=None):
        return f"{self.base_url_for_test}/bucket/{name}?X-Amz-Expires={expire}"


def test_presigned_download_passes_the_download_pages_form_action(
    bought, other_origin, live_server, headless_chromium, monkeypatch, settings
):
    issued, file = bought
    storage = BucketStorage(location=settings.PRIVATE_STORAGE_ROOT)
    storage.base_url_for_test = other_origin.url
    monkeypatch.setattr(type(file)._meta.get_field("file"), "storage", storage)
    url = live_server.url + reverse("wagtail_paid_delivery:download", args=[issued.token])
    context = headless_chromium.new_context(accept_downloads=True)
    page = context.new_page()

    def download_through_the_button() -> bool:
        page.goto(url)
        try:
            with page.expect_download(timeout=5000) as info:
                page.get_by_role("button", name="Download Atlas").click()
        except Exception:  # Playwright's TimeoutError: the browser refused the redirect
            return False
        return Path(info.value.path()).read_bytes() == DATA

    with override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "s3"}):
        assert download_through_the_button()
        assert any(p.startswith("/bucket/") for p in other_origin.paths)
        # The control: without the storage's origin in form-action, Chromium blocks the
        # redirect chain that started with the button's POST.
        monkeypatch.setattr(serving, "redirect_origins", lambda files: [])
        assert not download_through_the_button()
    counted = in_thread(
        lambda: FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count
    )
    assert counted >= 1
    context.close()
