"""Telling past buyers, in a real browser: the editor ticks "email past buyers", previews the
email, publishes, and sees the progress; a buyer opens the unsubscribe link and confirms.
Takes docs/screenshots/update-*.png (WPD_SCREENSHOTS=1)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.screenshots import SCREENSHOTS
from tests.test_download_browser import in_thread
from tests.test_shop_desk_browser import full_screenshot
from wagtail_paid_delivery.models import OutboundEmail, UpdateNotice, UpdateOptOut


def preview_text(frame) -> str:
    try:
        return frame.inner_text("body", timeout=1000)
    except Exception:  # a frame detached while the preview reloads: read the next one
        return ""


pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

SUBJECT = "Field guide: the second edition is here"
MESSAGE = (
    "Chapter 4 (waders) is rewritten, with 40 new range maps.\n"
    "Thank you to everyone who sent corrections."
)


def make_shop(home, admin_user):
    product = ProductPageFactory(parent=home, title="Field guide")
    for address in ("ada@example.com", "li.wei@example.net", "m.okafor@example.org"):
        PurchaseFactory(product=product, paid=True, email=address)
    PurchaseFactory(product=product, paid=True, email="jo@example.com", status="refunded")
    client = Client()
    client.force_login(admin_user)
    return product, client.cookies[settings.SESSION_COOKIE_NAME].value


def test_browser_editor_notifies_previews_and_sees_progress_and_buyer_unsubscribes(
    home, admin_user, live_server, headless_chromium
):
    product, session = in_thread(lambda: make_shop(home, admin_user))
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    edit = reverse("wagtailadmin_pages:edit", args=[product.pk])
    assert page.goto(live_server.url + edit).status == 200

    # The editor's choice, in the page's own form.
    page.get_by_label("Email past buyers when this is published").check()
    page.get_by_label("Update email subject").fill(SUBJECT)
    page.get_by_label("Update email message").fill(MESSAGE)
    section = page.locator("section", has=page.get_by_label("Update email subject")).last
    section.scroll_into_view_if_needed()
    section.screenshot(path=str(SCREENSHOTS / "update-notice-editor.png"))

    # The preview panel, in the "Update email" mode: the email as a buyer reads it.
    page.locator('[data-side-panel-toggle="preview"]').click()
    mode = page.locator("select[data-w-preview-target='mode'], #id_preview_mode").first
    # The panel's iframe is replaced as the preview reloads, and a mode chosen before the panel
    # has loaded can be lost: choose it again until a frame shows the update email with the
    # words typed above.
    deadline = time.monotonic() + 30
    shown = ""
    while time.monotonic() < deadline and not ("40 new range maps" in shown and SUBJECT in shown):
        if not any("mode=update_email" in frame.url for frame in page.frames):
            mode.select_option("" if mode.input_value() == "update_email" else "update_email")
        page.wait_for_timeout(500)
        shown = " ".join(
            preview_text(frame) for frame in page.frames if "update_email" in frame.url
        )
    assert "40 new range maps" in shown and SUBJECT in shown, shown
    page.screenshot(path=str(SCREENSHOTS / "update-notice-preview.png"))
    page.locator('[data-side-panel-toggle="preview"]').click()

    # Publish: the three paid buyers are emailed (the task runs at once in these settings).
    page.locator("button[data-w-dropdown-target='toggle']").last.click()
    page.get_by_role("button", name="Publish").click()
    page.wait_for_url("**/pages/**")
    sent = [m for m in mail.outbox if m.subject == SUBJECT]
    assert sorted(m.to[0] for m in sent) == [
        "ada@example.com",
        "li.wei@example.net",
        "m.okafor@example.org",
    ]
    # One failed for good, to show what the desk shows then.
    in_thread(
        lambda: OutboundEmail.objects.filter(kind="update", to="m.okafor@example.org").update(
            status="failed",
            last_error="SMTPRecipientsRefused: 550 5.1.1 mailbox unavailable",
        )
    )
    assert page.goto(live_server.url + edit).status == 200
    panel = page.locator("section", has=page.get_by_text("Update notices sent")).last
    panel.scroll_into_view_if_needed()
    assert panel.get_by_text("See failed emails").is_visible()
    panel.screenshot(path=str(SCREENSHOTS / "update-notice-panel.png"))
    assert in_thread(lambda: UpdateNotice.objects.count()) == 1

    # The buyer's side: the email's unsubscribe link asks first; the button unsubscribes.
    message = next(m for m in sent if m.to == ["ada@example.com"])
    target = urlsplit(message.extra_headers["List-Unsubscribe"].strip("<>")).path
    buyer = context.new_page()
    buyer.set_viewport_size({"width": 900, "height": 640})
    assert buyer.goto(live_server.url + target).status == 200
    button = buyer.get_by_role("button", name="Unsubscribe from update emails")
    assert button.is_visible()
    full_screenshot(buyer, "update-unsubscribe.png")
    assert in_thread(lambda: UpdateOptOut.objects.count()) == 0  # looking changed nothing
    button.click()
    buyer.get_by_text("You are unsubscribed").wait_for(timeout=10000)
    assert in_thread(lambda: UpdateOptOut.objects.count()) == 1
    context.close()
