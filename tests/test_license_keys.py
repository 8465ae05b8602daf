"""License keys: issued once with the payment, shown to the buyer, signed so an app verifies
them offline, and validated/activated/deactivated through ``licenses/``."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core import mail
from django.core.management import call_command
from django.urls import reverse

from tests.factories import ProductPageFactory
from tests.stripe_fake import event_for, post_event
from wagtail_paid_delivery import licenses
from wagtail_paid_delivery.fulfillment import fulfill_checkout
from wagtail_paid_delivery.models import LicenseActivation, LicenseKey, Purchase

ORIGIN = "http://testserver"
SIGNING_KEY = licenses.generate_signing_key()
ENDPOINT = "/shop/licenses/"


@pytest.fixture(autouse=True)
def signing_key(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_SIGNING_KEY": SIGNING_KEY,
    }


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Sketch app", license_activation_limit=2)


def public_key() -> Ed25519PublicKey:
    raw = base64.b64decode(licenses.public_key_base64(licenses.load_private_key(SIGNING_KEY)))
    return Ed25519PublicKey.from_public_bytes(raw)


def buy(client, fake_stripe, product, capture) -> Purchase:
    """Buy ``product`` through the checkout URL, pay at Stripe, deliver the webhook."""
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 303
    purchase = Purchase.objects.latest("created_at")
    fake_stripe.pay(purchase.stripe_checkout_session_id, email="ada@example.com")
    with capture(execute=True):
        event = event_for(fake_stripe.session(purchase.stripe_checkout_session_id))
        assert post_event(client, event).status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    return purchase


def call(client, action, key, instance=None, **extra):
    body = {"action": action, "key": key}
    if instance is not None:
        body["instance"] = instance
    response = client.post(ENDPOINT, json.dumps(body), content_type="application/json", **extra)
    return response.status_code, response.json()


@pytest.fixture
def bought(client, fake_stripe, product, django_capture_on_commit_callbacks):
    purchase = buy(client, fake_stripe, product, django_capture_on_commit_callbacks)
    return purchase, licenses.key_text(purchase.license_key)


def test_a_paid_purchase_gets_one_key_shown_on_the_success_page_and_in_the_email(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    purchase, key = bought
    assert LicenseKey.objects.filter(purchase=purchase).count() == 1

    # Delivered again (the success page settling, a replayed webhook): still the one key.
    with django_capture_on_commit_callbacks(execute=True):
        fulfill_checkout(purchase.stripe_checkout_session_id)
        post_event(client, event_for(fake_stripe.session(purchase.stripe_checkout_session_id)))
    assert LicenseKey.objects.filter(purchase=purchase).count() == 1
    assert licenses.key_text(LicenseKey.objects.get(purchase=purchase)) == key

    page = client.get(
        reverse("wagtail_paid_delivery:success"),
        {"session_id": purchase.stripe_checkout_session_id},
    )
    assert key in page.content.decode()
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    assert key in message.body
    assert key in message.alternatives[0][0]
    # At rest: the key id, never the key.
    row = LicenseKey.objects.values().get(purchase=purchase)
    assert key.replace("-", "") not in json.dumps(row, default=str)


def test_products_without_a_limit_issue_no_key(
    client, home, fake_stripe, django_capture_on_commit_callbacks
):
    plain = ProductPageFactory(parent=home, license_activation_limit=None)
    purchase = buy(client, fake_stripe, plain, django_capture_on_commit_callbacks)
    assert not LicenseKey.objects.filter(purchase=purchase).exists()
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    assert "license key" not in message.body


def test_an_app_verifies_the_key_offline_with_the_public_key(bought, product):
    purchase, key = bought
    facts = licenses.verify_offline(key, [public_key()])
    assert facts is not None
    assert facts.product_id == product.pk
    assert facts.key_id == purchase.license_key.key_id
    assert facts.issued_on == purchase.license_key.issued_on
    # Copied with other spacing or case: still the key.
    assert licenses.verify_offline(key.lower().replace("-", " "), [public_key()]) == facts
    # Another shop's public key does not verify it.
    other = licenses.load_private_key(licenses.generate_signing_key()).public_key()
    assert licenses.verify_offline(key, [other]) is None


def test_activate_up_to_the_limit_then_refused_and_deactivate_frees_a_seat(client, bought):
    _purchase, key = bought
    assert call(client, "activate", key, "laptop") == (
        200,
        {
            "status": "activated",
            "product_id": _purchase.product_id,
            "issued_on": _purchase.license_key.issued_on.isoformat(),
            "activation_limit": 2,
            "activations": 1,
            "active_on_instance": True,
        },
    )
    # The same instance again takes no second seat.
    assert call(client, "activate", key, "laptop")[1]["activations"] == 1
    assert call(client, "activate", key, "desktop")[1]["activations"] == 2
    status, body = call(client, "activate", key, "tablet")
    assert (status, body["status"], body["activations"]) == (409, "limit_reached", 2)

    status, body = call(client, "validate", key, "laptop")
    assert (status, body["status"], body["active_on_instance"]) == (200, "valid", True)

    status, body = call(client, "deactivate", key, "laptop")
    assert (status, body["status"], body["activations"]) == (200, "released", 1)
    assert call(client, "deactivate", key, "laptop")[1]["status"] == "not_active"
    status, body = call(client, "activate", key, "tablet")
    assert (status, body["status"]) == (200, "activated")
    released = LicenseActivation.objects.get(instance_id="laptop")
    assert released.released_by == LicenseActivation.ReleasedBy.CLIENT


def test_a_refunded_purchase_answers_revoked(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    purchase, key = bought
    assert call(client, "activate", key, "laptop")[0] == 200
    fake_stripe.refund(purchase.stripe_checkout_session_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, fake_stripe.last_event("charge.refunded")).status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.REFUNDED
    for action in ("validate", "activate", "deactivate"):
        assert call(client, action, key, "laptop") == (403, {"status": "revoked"})


def test_unknown_malformed_and_tampered_keys_get_the_same_answer(client, bought, product):
    _purchase, key = bought
    raw = bytearray(base64.b32decode(key.replace("-", "")))
    raw[5] ^= 1  # another product id, same signature
    tampered = base64.b32encode(bytes(raw)).decode()
    # A key this shop's private key never signed for a purchase (another signing key).
    stranger = licenses.load_private_key(licenses.generate_signing_key())
    payload = licenses.PAYLOAD.pack(1, product.pk, bytes(12), 20000)
    unknown = base64.b32encode(payload + stranger.sign(payload)).decode()
    # Signed by this shop, but no such key was issued.
    forged_id = licenses.PAYLOAD.pack(1, product.pk, b"\x01" * 12, 20000)
    own = licenses.load_private_key(SIGNING_KEY)
    never_issued = base64.b32encode(forged_id + own.sign(forged_id)).decode()
    candidates = (tampered, unknown, never_issued, "", "AAAA", "0" * 136, 42, None, key[:-1])
    answers = [call(client, "activate", candidate, "laptop") for candidate in candidates]
    assert answers == [(404, {"status": "invalid"})] * len(candidates)
    assert not LicenseActivation.objects.exists()


def test_a_retired_signing_key_still_validates_after_rotation(client, bought, settings):
    _purchase, key = bought
    old_public = licenses.public_key_base64(licenses.load_private_key(SIGNING_KEY))
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_SIGNING_KEY": licenses.generate_signing_key(),
    }
    assert call(client, "validate", key)[1]["status"] == "invalid"
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_RETIRED_PUBLIC_KEYS": [old_public],
    }
    assert call(client, "validate", key)[1]["status"] == "valid"


def test_bad_requests_are_told_apart_from_keys(client, bought):
    _purchase, key = bought
    assert client.get(ENDPOINT).status_code == 405
    for body in ("not json", "[]", json.dumps({"action": "steal", "key": key})):
        response = client.post(ENDPOINT, body, content_type="application/json")
        assert response.status_code == 400
    # Activating needs an instance id; an oversized one is refused, not cut.
    assert call(client, "activate", key)[0] == 400
    assert call(client, "activate", key, "x" * 201)[0] == 400
    assert call(client, "activate", key, "line\nbreak")[0] == 400
    big = client.post(ENDPOINT, "{" + " " * 5000 + "}", content_type="application/json")
    assert big.status_code == 400


def test_the_endpoint_needs_no_csrf_token(bought):
    from django.test import Client

    _purchase, key = bought
    strict = Client(enforce_csrf_checks=True)
    status, body = call(strict, "validate", key)
    assert (status, body["status"]) == (200, "valid")


def test_the_endpoint_is_rate_limited_per_client(client, bought, settings):
    _purchase, key = bought
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_RATE_LIMIT": (3, 600),
    }
    for _ in range(3):
        assert call(client, "validate", key)[0] == 200
    response = client.post(ENDPOINT, json.dumps({"key": key}), content_type="application/json")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response.json()["status"] == "rate_limited"
    # Another client is counted on its own.
    assert call(client, "validate", key, REMOTE_ADDR="203.0.113.9")[0] == 200


def test_the_library_shows_the_key_while_the_purchase_is_paid(client, bought):
    purchase, key = bought
    from tests.factories import UserFactory

    user = UserFactory(email="ada@example.com")
    Purchase.objects.filter(pk=purchase.pk).update(user=user)
    client.force_login(user)
    assert key in client.get(reverse("wagtail_paid_delivery:library")).content.decode()
    Purchase.objects.filter(pk=purchase.pk).update(status=Purchase.Status.REVOKED)
    assert key not in client.get(reverse("wagtail_paid_delivery:library")).content.decode()


def test_the_signing_key_command_prints_a_working_pair(capsys):
    call_command("license_signing_key")
    out = capsys.readouterr().out
    private = out.split("LICENSE_SIGNING_KEY (secret): ")[1].split()[0]
    public = out.split("Public key (for apps):")[1].split()[0]
    assert licenses.public_key_base64(licenses.load_private_key(private)) == public


def test_the_desk_shows_the_key_and_support_releases_an_activation(client, bought):
    from wagtail.models import ModelLogEntry

    from tests.test_shop_desk import assert_refused, desk_user

    purchase, key = bought
    call(client, "activate", key, "laptop")
    call(client, "activate", key, "desktop")
    laptop = LicenseActivation.objects.get(instance_id="laptop")
    inspect = reverse("wagtail_paid_delivery_purchases:inspect", args=[purchase.pk])
    release = reverse(
        "wagtail_paid_delivery_purchases:release_activation", args=[purchase.pk, laptop.pk]
    )

    viewer = desk_user("view_purchase", username="viewer")
    client.force_login(viewer)
    page = client.get(inspect).content.decode()
    assert key in page and "laptop" in page
    assert licenses.public_key_base64() in page
    assert release not in page
    assert_refused(client, release, "post")

    client.force_login(desk_user("view_purchase", "support_purchase"))
    assert release in client.get(inspect).content.decode()
    assert client.post(release).status_code == 302
    laptop.refresh_from_db()
    assert laptop.released_by == LicenseActivation.ReleasedBy.SHOP
    entry = ModelLogEntry.objects.get(action="wagtail_paid_delivery.release_activation")
    assert entry.data["instance"] == "laptop"
    assert "laptop" in entry.message
    # Released once: again is refused, and the seat is free for another instance.
    client.post(release)
    assert (
        ModelLogEntry.objects.filter(action="wagtail_paid_delivery.release_activation").count() == 1
    )
    assert call(client, "activate", key, "tablet")[1]["activations"] == 2
    # Another purchase's activation id under this purchase: not found.
    other = reverse(
        "wagtail_paid_delivery_purchases:release_activation", args=[purchase.pk + 999, laptop.pk]
    )
    assert client.post(other).status_code == 404
