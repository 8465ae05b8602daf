"""An editor previewing DeliveryCopy sees every buyer screen and the email, in unsaved words."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import DeliveryCopyFactory
from tests.screenshots import SCREENSHOTS
from wagtail_paid_delivery.models import DeliveryCopy
from wagtail_paid_delivery.screens import PREVIEW_MODES

pytestmark = pytest.mark.django_db

COPY_FIELDS = [
    f.name
    for f in DeliveryCopy._meta.get_fields()
    if getattr(f, "validators", None)
    and any(v.__name__ == "validate_placeholders" for v in f.validators if hasattr(v, "__name__"))
]

#: The fields each preview mode shows.
MODE_FIELDS = {
    "success": ["success_title", "success_message"],
    "pending": ["pending_title", "pending_message"],
    "failed": ["failed_title", "failed_message"],
    "refunded": ["refunded_title", "refunded_message"],
    "shop_revoked": ["shop_revoked_title", "shop_revoked_message"],
    "suspended": ["suspended_title", "suspended_message"],
    "neutral": ["neutral_title", "neutral_message"],
    "checkout_unavailable": ["checkout_unavailable_title", "checkout_unavailable_message"],
    "email": ["email_body"],
    "payment_failed_email": ["payment_failed_email_body"],
    "download": ["download_intro"],
    "expired": ["expired_message"],
    "used_up": ["used_up_message"],
    "revoked": ["revoked_message"],
    "link_refunded": ["refunded_title", "refunded_message"],
    "link_shop_revoked": ["shop_revoked_title", "shop_revoked_message"],
    "link_suspended": ["suspended_title", "suspended_message"],
    "resend": ["resend_intro"],
    "resend_done": ["resend_confirmation"],
    "resend_sent": ["resend_sent"],
    "resend_email": ["resend_email_intro"],
}
#: Shown in the form; an HTML email has no subject line to preview.
SUBJECTS = {"email_subject", "payment_failed_email_subject", "resend_email_subject"}


def unsaved_words(field: str) -> str:
    return f"Unsaved {field} words for {{product}}"


@pytest.fixture
def previewing(admin_client):
    copy = DeliveryCopyFactory(name="Shop copy")
    url = reverse(
        "wagtailsnippets_wagtail_paid_delivery_deliverycopy:preview_on_edit", args=[copy.pk]
    )
    data = {"name": "Shop copy", **{field: unsaved_words(field) for field in COPY_FIELDS}}
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert response.json() == {"is_valid": True, "is_available": True}
    return copy, url


def test_every_buyer_screen_has_a_preview_mode():
    assert [mode for mode, _ in PREVIEW_MODES] == list(MODE_FIELDS)
    assert set(COPY_FIELDS) - {f for fields in MODE_FIELDS.values() for f in fields} == SUBJECTS


@pytest.mark.parametrize("mode", list(MODE_FIELDS))
def test_each_preview_mode_renders_the_editors_unsaved_words(admin_client, previewing, mode):
    copy, url = previewing
    response = admin_client.get(url, {"mode": mode})
    assert response.status_code == 200
    html = response.content.decode()
    for field in MODE_FIELDS[mode]:
        expected = f"Unsaved {field} words for "
        assert expected in html, (mode, field)
    if mode in ("neutral", "resend", "resend_done"):
        # Pages that do not know the product (the resend form here is the generic one).
        assert "Sample product" not in html
    else:
        assert "Sample product" in html
    # Nothing was saved.
    copy.refresh_from_db()
    assert copy.success_title == DeliveryCopy._meta.get_field("success_title").default


def test_previews_render_the_real_templates_with_sample_values(admin_client, previewing):
    _, url = previewing
    download = admin_client.get(url, {"mode": "download"}).content.decode()
    assert "Sample product (PDF)" in download and "5 downloads left" in download
    assert "3 downloads left" in download and "Extras (ZIP)" in download
    assert 'method="post"' in download  # the same buttons as the real page
    email = admin_client.get(url, {"mode": "email"}).content.decode()
    assert "Download your files" in email and "Link valid until:" in email
    expired = admin_client.get(url, {"mode": "expired"}).content.decode()
    assert "This link has expired" in expired and 'action="/shop/resend/"' in expired
    resend = admin_client.get(url, {"mode": "resend"}).content.decode()
    assert 'name="email"' in resend
    done = admin_client.get(url, {"mode": "resend_done"}).content.decode()
    assert "Check your email" in done
    paid = admin_client.get(url, {"mode": "success"}).content.decode()
    assert "Go to your downloads" in paid
    unavailable = admin_client.get(url, {"mode": "checkout_unavailable"}).content.decode()
    assert "Back to Sample product" in unavailable
    # A purchase that no longer gives access is offered no fresh links, on either page.
    for mode in ("link_refunded", "link_shop_revoked", "link_suspended"):
        refused = admin_client.get(url, {"mode": mode}).content.decode()
        assert 'action="/shop/resend/"' not in refused, mode
    for mode in ("refunded", "shop_revoked", "suspended"):
        assert "Go to your downloads" not in admin_client.get(url, {"mode": mode}).content.decode()
    failed_email = admin_client.get(url, {"mode": "payment_failed_email"}).content.decode()
    assert "Try again" in failed_email and "Download your files" not in failed_email
    resend_email = admin_client.get(url, {"mode": "resend_email"}).content.decode()
    assert "Download your files" in resend_email and "Sample product" in resend_email


def test_placeholders_in_the_preview_are_escaped(admin_client):
    copy = DeliveryCopyFactory(name="Escaping")
    url = reverse(
        "wagtailsnippets_wagtail_paid_delivery_deliverycopy:preview_on_edit", args=[copy.pk]
    )
    data = {"name": "Escaping", **{f: "ok" for f in COPY_FIELDS}}
    data["download_intro"] = "<script>alert(1)</script> {product}"
    assert admin_client.post(url, data).json()["is_valid"] is True
    html = admin_client.get(url, {"mode": "download"}).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Sample product" in html


def test_preview_needs_permission(client, previewing):
    _, url = previewing
    client.logout()
    response = client.get(url, {"mode": "success"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_edit_view_offers_the_preview_panel(admin_client):
    copy = DeliveryCopyFactory()
    response = admin_client.get(
        reverse("wagtailsnippets_wagtail_paid_delivery_deliverycopy:edit", args=[copy.pk])
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "preview" in html.lower() and "Resend confirmation" in html


# In a real browser: the admin's preview panel (docs/screenshots/preview-*.png) --------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_preview_panel_shows_the_buyer_screens(admin_user, live_server, headless_chromium):

    from django.conf import settings
    from django.test import Client

    from tests.test_download_browser import in_thread

    copy = in_thread(lambda: DeliveryCopyFactory(name="Shop copy"))
    client = Client()
    in_thread(lambda: client.force_login(admin_user))
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    screenshots = SCREENSHOTS
    screenshots.mkdir(parents=True, exist_ok=True)
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    edit = reverse("wagtailsnippets_wagtail_paid_delivery_deliverycopy:edit", args=[copy.pk])
    assert page.goto(live_server.url + edit).status == 200
    # Type first, then open the panel: opening it sends the form as it is now.
    page.get_by_role("tab", name="Download page").click()
    page.locator("#id_expired_message").fill(
        "Your link for {product} has expired (edited, not saved). Ask for a fresh one below."
    )
    page.locator('[data-side-panel-toggle="preview"]').click()
    frame = page.frame_locator("iframe[data-w-preview-target='iframe'], #w-preview-iframe").first
    frame.get_by_text("Thank you for your purchase").wait_for(timeout=15000)  # the default mode
    page.locator("select[data-w-preview-target='mode'], #id_preview_mode").first.select_option(
        "expired"
    )
    frame.get_by_text("(edited, not saved)").wait_for(timeout=20000)
    page.screenshot(path=str(screenshots / "preview-expired.png"))
    # The preview iframe alone, one mode per screenshot: the download page and the email.
    preview = reverse(
        "wagtailsnippets_wagtail_paid_delivery_deliverycopy:preview_on_edit", args=[copy.pk]
    )
    for mode in ("download", "email"):
        shot = context.new_page()
        shot.set_viewport_size({"width": 800, "height": 640})
        assert shot.goto(f"{live_server.url}{preview}?mode={mode}").status == 200
        shot.screenshot(path=str(screenshots / f"preview-{mode}.png"), full_page=True)
        shot.close()
    context.close()
