"""Pages that show a token send a strict Content-Security-Policy with a fresh nonce (issue 11).

What a browser does with it (a site's script without the nonce does not run, the page's own
styles do) is proven in Chromium: tests/test_csp_browser.py.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.files.storage import FileSystemStorage
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.test_success_page import start_checkout, thanks
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink

pytestmark = pytest.mark.django_db

CSP = "Content-Security-Policy"


def policy(response) -> dict[str, list[str]]:
    directives = {}
    for part in response[CSP].split(";"):
        name, *sources = part.split()
        assert name not in directives, f"{name} twice"
        directives[name] = sources
    return directives


def nonce_of(response) -> str:
    (source,) = policy(response)["script-src"]
    match = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{22,})'", source)
    assert match, source
    return match.group(1)


def assert_strict(response, *, styles=("'self'",), fonts=("'self'",), images=("'self'",)):
    """The policy the issue asks for, and a page whose every inline block carries its nonce."""
    nonce = nonce_of(response)
    assert policy(response) == {
        "default-src": ["'none'"],
        "script-src": [f"'nonce-{nonce}'"],
        "style-src": [*styles, f"'nonce-{nonce}'"],
        "font-src": list(fonts),
        "img-src": list(images),
        "connect-src": ["'self'"],  # the download page's counts (download-count.js)
        "base-uri": ["'none'"],
        "form-action": policy(response)["form-action"],
        "frame-ancestors": ["'none'"],
    }
    assert policy(response)["form-action"][0] == "'self'"
    html = response.content.decode()
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", html):
        assert f'nonce="{nonce}"' in tag, tag
    # Nonces cannot allow attributes: no inline style="" or on…="" handlers on these pages.
    assert not re.search(r"<[^>]+\sstyle=", html)
    assert not re.search(r"<[^>]+\son[a-z]+=", html, re.IGNORECASE)
    return nonce


@pytest.fixture
def link(home):
    product = ProductPageFactory(parent=home, title="Field guide", files=2)
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, product.specific.product_files[0]


def expire(issued) -> None:
    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=timezone.now() - timedelta(hours=1)
    )


def test_download_page_has_a_strict_policy_and_a_fresh_nonce_per_response(client, link):
    issued, _ = link
    url = reverse("wagtail_paid_delivery:download", args=[issued.token])
    first, second = client.get(url), client.get(url)
    assert first.status_code == second.status_code == 200
    nonces = {assert_strict(first), assert_strict(second)}
    assert len(nonces) == 2  # a nonce read from one page is worth nothing on the next
    assert policy(first)["form-action"] == ["'self'"]


def test_refused_and_hand_off_error_pages_are_strict_too(client, link):
    issued, file = link
    handoff = links.handoff_url(issued.link, file)
    expire(issued)
    page = client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    button = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    )
    refused = client.get(handoff)
    assert page.status_code == button.status_code == refused.status_code == 410
    for response in (page, button, refused):
        assert_strict(response)
    # The refused page's resend form and its inline style carry the nonce.
    assert 'class="resend"' in page.content.decode()

    for response in (
        client.get(reverse("wagtail_paid_delivery:download", args=["x" * 43])),
        client.get(reverse("wagtail_paid_delivery:handoff", args=["forged:handoff"])),
    ):
        assert response.status_code == 404
        assert policy(response)["script-src"] == [f"'nonce-{nonce_of(response)}'"]


def test_a_missing_file_page_is_strict_and_a_file_response_keeps_its_sandbox(client, link):
    issued, file = link
    served = client.get(links.handoff_url(issued.link, file))
    assert served.status_code == 200
    assert served[CSP] == "default-src 'none'; sandbox"  # the file's own, not the page's
    b"".join(served.streaming_content)

    file.file.storage.delete(file.file.name)
    missing = client.get(links.handoff_url(issued.link, file))
    assert missing.status_code == 503
    assert_strict(missing)


def test_library_is_strict(client, home):
    user = UserFactory()
    PurchaseFactory(paid=True, user=user, product=ProductPageFactory(parent=home))
    client.force_login(user)
    response = client.get(reverse("wagtail_paid_delivery:library"))
    assert response.status_code == 200
    assert_strict(response)


def test_success_page_is_strict_only_when_it_shows_a_link(client, home, fake_stripe):
    product = ProductPageFactory(parent=home, title="Field guide", price_amount=1250)
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id

    pending = thanks(client, session_id)
    assert "Your payment is processing" in pending.content.decode()
    assert CSP not in pending  # no token on the page: the site's own scripts may run
    stranger = thanks(Client(), session_id)
    assert CSP not in stranger

    fake_stripe.pay(session_id, email="ada@example.com")
    paid = thanks(client, session_id)
    assert "/shop/d/" in paid.content.decode()
    assert_strict(paid)
    assert nonce_of(paid) != nonce_of(thanks(client, session_id))


def test_sites_allow_their_styles_fonts_and_images_by_setting(client, link, settings):
    issued, _ = link
    url = reverse("wagtail_paid_delivery:download", args=[issued.token])
    csp = {
        "style-src": ["'self'", "https://fonts.googleapis.com"],
        "font-src": ["https://fonts.gstatic.com"],
    }
    with override_settings(
        WAGTAIL_PAID_DELIVERY={"DELIVERY_PAGE_CSP": csp},
        STATIC_URL="https://cdn.example/static/",
        MEDIA_URL="//media.example/media/",
    ):
        response = client.get(url)
    assert_strict(
        response,
        styles=("'self'", "https://fonts.googleapis.com", "https://cdn.example"),
        fonts=("https://fonts.gstatic.com", "https://cdn.example"),
        images=("'self'", "https://cdn.example", "media.example"),
    )


class BucketStorage(FileSystemStorage):
    """Stands in for S3Storage: url() presigns for another origin (signing needs no request)."""

    def url(self, name, parameters=None, expire=None, http_method=None):
        return f"https://bucket.s3.example/{name}?X-Amz-Expires={expire}&X-Amz-Signature=f"


def test_with_the_presigned_backend_the_buttons_may_end_at_the_storage(
    client, link, monkeypatch, settings
):
    issued, file = link
    field = type(file)._meta.get_field("file")
    monkeypatch.setattr(field, "storage", BucketStorage(location=settings.PRIVATE_STORAGE_ROOT))
    url = reverse("wagtail_paid_delivery:download", args=[issued.token])
    with override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "s3"}):
        response = client.get(url)
    assert_strict(response)
    # Browsers check form-action on each redirect after the button's POST (303 to the hand-off,
    # 302 to the storage): without the storage's origin the download would be blocked.
    assert policy(response)["form-action"] == ["'self'", "https://bucket.s3.example"]
