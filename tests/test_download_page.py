"""The download page and its buttons, through the real URLs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    DeliveryCopyFactory,
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
)
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadLink, FileDownloadCount, Purchase

pytestmark = pytest.mark.django_db

PAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@pytest.fixture
def bought(home):
    copy = DeliveryCopyFactory(
        download_intro="Files for {product}, until {expires}, {downloads_left} left.",
        expired_message="EXPIRED for {product}",
        used_up_message="USED UP for {product}",
        revoked_message="REVOKED for {product}",
        refunded_title="Refunded: {product}",
        refunded_message="REFUNDED for {product}",
        suspended_title="Paused: {product}",
        suspended_message="SUSPENDED for {product}",
    )
    product = ProductPageFactory(parent=home, title="Field guide", files=2, delivery_copy=copy)
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, product, purchase


def page_url(token):
    return reverse("wagtail_paid_delivery:download", args=[token])


def button_url(token, file_id):
    return reverse("wagtail_paid_delivery:download_file", args=[token, file_id])


def assert_page_headers(response):
    for name, value in PAGE_HEADERS.items():
        assert response[name] == value, name


def test_download_page_lists_files_in_the_editors_words_and_changes_nothing(client, bought):
    issued, product, _ = bought
    files = product.product_files
    response = client.get(page_url(issued.token))
    assert response.status_code == 200
    assert_page_headers(response)
    html = response.content.decode()
    assert "Files for Field guide, until" in html and "5 left." in html
    for f in files:
        assert f.title in html and f.sha256 in html and f.size_display in html
        assert button_url(issued.token, f.pk) in html
    assert "5 downloads left" in html
    assert 'method="post"' in html and "csrfmiddlewaretoken" in html
    assert "products/" not in html  # never a storage path
    # Nothing loaded from anywhere else: only the app's own stylesheet and scripts.
    assert re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html) == [
        "/static/wagtail_paid_delivery/paid-delivery.css",
        "/static/wagtail_paid_delivery/download-count.js",
        "/static/wagtail_paid_delivery/local-time.js",
    ]
    # The checksum is behind a disclosure, named for its file; the counts say what they count.
    for f in files:
        assert (
            f'<details class="checksum"><summary>SHA-256 checksum<span class="visually-hidden">'
            f" {f.title}</span></summary><code>{f.sha256}</code></details>"
        ) in html
        assert f'aria-describedby="pd-left-{f.pk}"' in html
        assert f'id="pd-left-{f.pk}" data-pd-left="5"' in html
    # A GET (a mail scanner) changes nothing.
    client.get(page_url(issued.token))
    assert not FileDownloadCount.objects.exists() and not DownloadEvent.objects.exists()
    issued.link.refresh_from_db()
    assert issued.link.download_count == 0


def test_download_page_unlimited_link_says_so(client, home):
    product = ProductPageFactory(parent=home, download_limit=0)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    html = client.get(page_url(issued.token)).content.decode()
    assert "unlimited" in html and "downloads left" not in html


@pytest.mark.parametrize(
    "token",
    ["nope", "A" * 43, "A" * 44, "A" * 42, "..", "%2e%2e", "A" * 21 + "%2F" + "A" * 21],
)
def test_unknown_malformed_and_tricky_tokens_get_a_plain_404(client, bought, token):
    response = client.get(f"/shop/d/{token}/")
    assert response.status_code == 404
    assert b"Field guide" not in response.content
    assert b"expired" not in response.content.lower()


def test_truncated_and_tampered_tokens_get_a_plain_404(client, bought):
    issued, *_ = bought
    token = issued.token
    tampered = ("B" if token[0] != "B" else "C") + token[1:]
    for bad in (token[:-1], tampered, token + "A"):
        response = client.get(page_url(bad))
        assert response.status_code == 404
        assert_page_headers(response)


def _expire(link):
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(minutes=1))


@pytest.mark.parametrize(
    ("setup", "words", "heading"),
    [
        (lambda issued, purchase: _expire(issued.link), "EXPIRED for Field guide", "expired"),
        (lambda issued, purchase: links.revoke_link(issued.link), "REVOKED", "no longer valid"),
        (
            lambda issued, purchase: Purchase.objects.filter(pk=purchase.pk).update(
                status="refunded"
            ),
            "REFUNDED for Field guide",
            "Refunded: Field guide",
        ),
        (
            lambda issued, purchase: Purchase.objects.filter(pk=purchase.pk).update(
                status="disputed"
            ),
            "SUSPENDED for Field guide",
            "Paused: Field guide",
        ),
    ],
    ids=["expired", "revoked", "refunded", "disputed"],
)
def test_refused_links_get_a_410_that_says_why(client, bought, setup, words, heading):
    issued, product, purchase = bought
    setup(issued, purchase)
    response = client.get(page_url(issued.token))
    assert response.status_code == 410
    assert_page_headers(response)
    html = response.content.decode()
    assert words in html and heading in html
    # The button refuses the same way.
    response = client.post(button_url(issued.token, product.product_files[0].pk))
    assert response.status_code == 410 and words in response.content.decode()


def test_used_up_link_gets_a_410_that_says_so(client, bought):
    issued, product, _ = bought
    for f in product.product_files:
        FileDownloadCount.objects.create(link=issued.link, file_id=f.pk, count=5)
    response = client.get(page_url(issued.token))
    assert response.status_code == 410
    assert "USED UP for Field guide" in response.content.decode()
    response = client.post(button_url(issued.token, product.product_files[0].pk))
    assert response.status_code == 410


def test_one_used_up_file_leaves_the_others_downloadable(client, bought):
    issued, product, _ = bought
    first, second = product.product_files
    FileDownloadCount.objects.create(link=issued.link, file_id=first.pk, count=5)
    response = client.get(page_url(issued.token))
    assert response.status_code == 200
    assert "0 downloads left" in response.content.decode()
    assert client.post(button_url(issued.token, first.pk)).status_code == 410
    assert client.post(button_url(issued.token, second.pk)).status_code == 303


def test_button_answers_303_with_a_fresh_hand_off_url(client, bought):
    issued, product, _ = bought
    f = product.product_files[0]
    first = client.post(button_url(issued.token, f.pk))
    second = client.post(button_url(issued.token, f.pk))
    assert first.status_code == second.status_code == 303
    assert_page_headers(first)
    assert first["Location"].startswith("/shop/d/h/")
    assert first["Location"] != second["Location"]
    assert issued.token not in first["Location"]
    # Pressing the button counts nothing: the hand-off does.
    assert not FileDownloadCount.objects.exists()


def test_button_needs_post_and_a_csrf_token(bought):
    from django.test import Client

    issued, product, _ = bought
    f = product.product_files[0]
    csrf_client = Client(enforce_csrf_checks=True)
    assert csrf_client.get(button_url(issued.token, f.pk)).status_code == 405
    assert csrf_client.post(button_url(issued.token, f.pk)).status_code == 403
    page = csrf_client.get(page_url(issued.token))
    token = page.context["csrf_token"]
    response = csrf_client.post(button_url(issued.token, f.pk), {"csrfmiddlewaretoken": str(token)})
    assert response.status_code == 303


def test_token_for_another_products_file_is_a_404(client, bought, home):
    issued, *_ = bought
    other = ProductPageFactory(parent=home, files=1)
    response = client.post(button_url(issued.token, other.product_files[0].pk))
    assert response.status_code == 404
    assert b"Field guide" not in response.content


def test_file_ids_with_path_tricks_do_not_resolve(client, bought):
    issued, product, _ = bought
    f = product.product_files[0]
    for path in (
        f"/shop/d/{issued.token}/../{f.pk}/",
        f"/shop/d/{issued.token}/{f.pk}%2F..%2F/",
        f"/shop/d/{issued.token}/-{f.pk}/",
        f"/shop/d/{issued.token}/{f.pk}.0/",
        f"/shop/d/{issued.token}/99999999/",
    ):
        assert client.post(path).status_code == 404, path


def test_product_file_added_after_purchase_is_listed(client, bought):
    issued, product, _ = bought
    ProductFileFactory(page=product, title="Bonus chapter")
    assert "Bonus chapter" in client.get(page_url(issued.token)).content.decode()


def test_buyer_paths_work_anonymously_on_a_login_required_site(client, bought, settings):
    # A site using LoginRequiredMiddleware must not send buyers (who hold a link, not an
    # account) or Stripe to a login page.
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
    ]
    issued, product, _ = bought
    f = product.product_files[0]
    assert client.get(page_url(issued.token)).status_code == 200
    handoff = client.post(button_url(issued.token, f.pk))
    assert handoff.status_code == 303
    response = client.get(handoff["Location"])
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == f.file.open("rb").read()
    assert client.get(reverse("wagtail_paid_delivery:resend")).status_code == 200
    assert client.get(reverse("wagtail_paid_delivery:success")).status_code == 200
    # The library works without an account too: its email form and its sign-in link.
    assert client.get(reverse("wagtail_paid_delivery:library")).status_code == 200
    made_up = reverse("wagtail_paid_delivery:library_sign_in", args=["A" * 43])
    assert client.get(made_up).status_code == 410


def test_error_reports_do_not_show_the_token_in_frame_variables(rf, bought, monkeypatch):

    from django.views.debug import ExceptionReporter

    from wagtail_paid_delivery.views.download import download

    issued, _, _ = bought

    def database_down(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(links, "check_link", database_down)
    request = rf.get(page_url(issued.token))
    with pytest.raises(RuntimeError) as raised:
        download(request, issued.token)
    reporter = ExceptionReporter(request, raised.type, raised.value, raised.tb)
    frames = reporter.get_traceback_frames()
    assert any("check_token" in frame["function"] for frame in frames)
    # The token's own variables in the view's and check_token's frames are hidden. (The request's
    # repr still shows the path, as every Django error report does: the log filter redacts it.)
    hidden = {
        (f["function"], name): value
        for f in frames
        if f["function"] in ("download", "check_token")
        for name, value in f["vars"]
        if name in ("token", "raw")
    }
    assert set(hidden) == {("download", "token"), ("check_token", "raw")}
    assert all(issued.token not in str(value) for value in hidden.values())
