"""library/ by email alone, in a real browser at a desktop and a phone width.

Takes docs/screenshots/library-{email,check-email,sign-in,list}-{1280,390}.png (with
``WPD_SCREENSHOTS=1``).
"""

from __future__ import annotations

import re

import pytest
from django.core import mail

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.screenshots import SCREENSHOTS
from tests.test_download_browser import in_thread
from wagtail_paid_delivery.models import DownloadLink, LibrarySignIn, Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

SIGN_IN_RE = re.compile(r"https?://[^/\s]+(/shop/library/d/[A-Za-z0-9_-]{43}/)")


@pytest.fixture
def bought(home):
    guide = ProductPageFactory(parent=home, title="Field guide", files=2)
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    PurchaseFactory(paid=True, product=guide, email="reader@example.com")
    refunded = PurchaseFactory(paid=True, product=atlas, email="Reader@example.com")
    Purchase.objects.filter(pk=refunded.pk).update(status=Purchase.Status.REFUNDED)


@pytest.mark.parametrize("width", [1280, 390])
def test_browser_library_by_email_alone(bought, live_server, headless_chromium, width):
    mail.outbox = []
    context = headless_chromium.new_context(viewport={"width": width, "height": 720})
    page = context.new_page()
    shot = lambda name: page.screenshot(  # noqa: E731
        path=str(SCREENSHOTS / f"library-{name}-{width}.png"), full_page=True
    )

    assert page.goto(live_server.url + "/shop/library/").status == 200
    shot("email")
    page.get_by_label("Email address").fill("READER@example.com")
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Check your email").is_visible()
    shot("check-email")

    (message,) = mail.outbox
    path = SIGN_IN_RE.search(message.body)[1]
    assert page.goto(live_server.url + path).status == 200
    assert in_thread(lambda: LibrarySignIn.objects.get().used_at) is None
    shot("sign-in")
    page.get_by_role("button", name="Open my downloads").click()
    page.wait_for_load_state()
    assert page.url == live_server.url + "/shop/library/"
    assert page.get_by_text("Signed in with reader@example.com").is_visible()
    assert page.get_by_text("Refunded: no longer available to download.").is_visible()
    shot("list")

    page.get_by_role("button", name="Get download link Field guide").click()
    page.wait_for_load_state()
    assert "/shop/d/" in page.url
    assert page.get_by_text("File 1").first.is_visible()
    assert in_thread(lambda: DownloadLink.objects.filter(reason="library").count()) == 1

    page.go_back()
    page.reload()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_load_state()
    assert page.get_by_role("button", name="Email me a sign-in link").is_visible()
    context.close()
