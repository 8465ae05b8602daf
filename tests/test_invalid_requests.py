"""Requests with made-up input write no rows, in any table, at every buyer URL.

A flood of garbage (random tokens, forged hand-offs, guessed session ids, bad forms) must not
grow the database. Each test counts the rows of every installed model before and after.
"""

from __future__ import annotations

import json
import secrets
import uuid
from urllib.parse import quote

import pytest
from django.apps import apps
from django.core import signing
from django.test import Client
from django.urls import reverse

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.stripe_fake import sign_payload
from wagtail_paid_delivery import binding, links
from wagtail_paid_delivery.models import DownloadLink

pytestmark = pytest.mark.django_db


def row_counts() -> dict[str, int]:
    """Rows of every concrete model of every installed app (Wagtail's, django-q2's, ours…)."""
    return {
        model._meta.label: model._default_manager.count()
        for model in apps.get_models()
        if not model._meta.proxy
    }


@pytest.fixture
def shop(home):
    """A product with two files, a paid purchase with a working link, and a second product."""
    product = ProductPageFactory(parent=home, title="Atlas", files=2)
    other = ProductPageFactory(parent=home, title="Other", files=1)
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return product, other, purchase, issued


def assert_no_rows_written(requests):
    """Send each (method, path, kwargs) and assert no table gained or lost a row."""
    client = Client()
    before = row_counts()
    answers = []
    for method, path, kwargs in requests:
        response = getattr(client, method)(path, **kwargs)
        answers.append((method, path, response.status_code))
    after = row_counts()
    changed = {
        label: (before[label], after[label]) for label in before if before[label] != after[label]
    }
    assert changed == {}, changed
    return answers


def random_token() -> str:
    return secrets.token_urlsafe(32)  # the real shape, 43 characters, never issued


def test_made_up_download_tokens_write_nothing(shop):
    product, other, purchase, issued = shop
    file_id = product.product_files[0].pk
    tokens = [
        random_token(),
        random_token()[:42],
        random_token() + "A",
        "x",
        quote("../" * 10, safe=""),
        "%00" * 20,
        "é" * 43,
        issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B"),
    ]
    requests = []
    for token in tokens:
        requests += [
            ("get", f"/shop/d/{token}/", {}),
            ("head", f"/shop/d/{token}/", {}),
            ("post", f"/shop/d/{token}/{file_id}/", {}),
        ]
    # A real token with a file of another product, or no file at all.
    requests += [
        ("post", f"/shop/d/{issued.token}/{other.product_files[0].pk}/", {}),
        ("post", f"/shop/d/{issued.token}/999999999/", {}),
    ]
    answers = assert_no_rows_written(requests)
    assert {status for _, _, status in answers} == {404}, answers


def test_forged_truncated_and_stale_hand_offs_write_nothing(shop, client):
    product, other, purchase, issued = shop
    file = product.product_files[0]
    pressed = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    )
    signed = pressed["Location"].split("/d/h/")[1].rstrip("/")
    payload = signing.loads(signed, salt=links.HANDOFF_SALT)
    values = [
        "garbage",
        signed[:-1],
        signed[:20],
        signed + "x",
        signed.upper(),
        signing.dumps(payload),  # our signature, another salt
        signing.dumps(payload, salt=links.HANDOFF_SALT, key="another-secret-key"),
        # Signed by us, but for a link that does not exist (or was removed by cleanup):
        signing.dumps({**payload, "l": 10**9}, salt=links.HANDOFF_SALT),
        # Signed by us, for this link and another product's file:
        signing.dumps({**payload, "f": other.product_files[0].pk}, salt=links.HANDOFF_SALT),
        # Signed by us, with junk in the fields:
        signing.dumps({"l": "x", "f": None, "n": 1}, salt=links.HANDOFF_SALT),
        signing.dumps([1, 2, 3], salt=links.HANDOFF_SALT),
    ]
    requests = []
    for value in values:
        path = f"/shop/d/h/{value}/"
        requests += [
            ("get", path, {}),
            ("head", path, {}),
            ("get", path, {"headers": {"Range": "bytes=0-"}}),
            ("get", path, {"headers": {"Range": "bytes=10-20", "If-Range": '"x"'}}),
        ]
    answers = assert_no_rows_written(requests)
    assert {status for _, _, status in answers} == {404}, answers


def test_guessed_success_page_session_ids_write_nothing(shop):
    product, other, purchase, issued = shop
    pending = PurchaseFactory(product=product)
    ids = [
        "cs_test_" + secrets.token_hex(16),
        "cs_live_" + "a" * 300,
        "",
        "%00",
        "' OR 1=1 --",
        purchase.stripe_checkout_session_id,  # a real one, from a browser that did not buy
        pending.stripe_checkout_session_id,  # a real pending one: no Stripe call, no change
    ]
    forged_cookie = signing.dumps({"purchases": [str(uuid.uuid4())]}, salt="another salt")
    requests = [("get", "/shop/thanks/", {"data": {"session_id": i}}) for i in ids]
    requests += [
        ("get", "/shop/thanks/", {}),
        (
            "get",
            "/shop/thanks/",
            {
                "data": {"session_id": pending.stripe_checkout_session_id},
                "headers": {"Cookie": f"{binding.COOKIE_NAME}={forged_cookie}"},
            },
        ),
    ]
    answers = assert_no_rows_written(requests)
    assert {status for _, _, status in answers} == {200}, answers


def test_bad_forms_at_resend_checkout_library_and_webhook_write_nothing(shop):
    product, other, purchase, issued = shop
    payload = json.dumps({"id": "evt_forged", "object": "event", "type": "x"}).encode()
    requests = [
        ("get", "/shop/resend/", {}),
        ("post", "/shop/resend/", {"data": {"email": "not an address"}}),
        ("post", "/shop/resend/", {"data": {"email": "x" * 300 + "@example.com"}}),
        ("post", "/shop/resend/", {"data": {}}),
        # Checkout: no such page, a page that is not a product, a foreign origin, a GET.
        ("post", "/shop/checkout/999999999/", {"HTTP_ORIGIN": "http://testserver"}),
        (
            "post",
            f"/shop/checkout/{product.get_parent().pk}/",
            {"HTTP_ORIGIN": "http://testserver"},
        ),
        ("post", f"/shop/checkout/{product.pk}/", {"HTTP_ORIGIN": "https://evil.example"}),
        ("post", f"/shop/checkout/{product.pk}/", {}),
        ("get", f"/shop/checkout/{product.pk}/", {}),
        # The library, signed out: its form, a button, a made-up or malformed sign-in link.
        ("get", "/shop/library/", {}),
        ("post", "/shop/library/", {"data": {"email": "not an address"}}),
        ("post", f"/shop/library/{purchase.public_id}/", {}),
        ("get", "/shop/library/d/" + "A" * 43 + "/", {}),
        ("post", "/shop/library/d/" + "A" * 43 + "/", {}),
        ("post", "/shop/library/d/short/", {}),
        # The webhook: unsigned, forged, signed with another secret.
        ("post", "/shop/stripe/webhook/", {"data": payload, "content_type": "application/json"}),
        (
            "post",
            "/shop/stripe/webhook/",
            {
                "data": payload,
                "content_type": "application/json",
                "HTTP_STRIPE_SIGNATURE": "t=1,v1=" + "0" * 64,
            },
        ),
        (
            "post",
            "/shop/stripe/webhook/",
            {
                "data": payload,
                "content_type": "application/json",
                "HTTP_STRIPE_SIGNATURE": sign_payload(payload, "whsec_someone_else"),
            },
        ),
    ]
    answers = assert_no_rows_written(requests)
    assert [status for _, _, status in answers] == [
        200,
        200,
        200,
        200,
        404,
        404,
        403,
        403,
        405,
        200,
        200,
        404,
        410,
        410,
        410,
        400,
        400,
        400,
    ]


def test_a_signed_in_user_asking_for_someone_elses_purchase_writes_nothing(shop):
    product, other, purchase, issued = shop
    client = Client()
    client.force_login(UserFactory())
    before = row_counts()
    for public_id in (purchase.public_id, uuid.uuid4()):
        response = client.post(reverse("wagtail_paid_delivery:library_download", args=[public_id]))
        assert response.status_code == 404
    assert row_counts() == before
