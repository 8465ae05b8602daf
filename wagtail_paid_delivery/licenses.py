"""License keys: issued once per paid purchase, signed with Ed25519, activated per app instance.

A key is ``PAYLOAD || SIGNATURE`` in base32, grouped by eight for copying. The payload (21
bytes, big-endian) is a format version, the product's page id, a random 12-byte key id and the
issue date (days since 1970-01-01); the signature is Ed25519's over the payload with
``LICENSE_SIGNING_KEY``. An app verifies a key offline with the shop's public key (the admin
shows it; :func:`verify_offline` is the reference), and asks ``licenses/`` (``views.licenses``)
to activate it on an instance, within the product's activation limit.

At rest the database holds the key id and the payload's facts, never the key text: the text is
signed again when shown (Ed25519 is deterministic, so it is the same text every time).

Answers never tell unknown keys from malformed ones (both :data:`INVALID`), so the endpoint
cannot be used to find keys; a key that verifies but whose purchase lost its access (refunded,
revoked, disputed) answers :data:`REVOKED`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import secrets
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import transaction
from django.utils import timezone

from .conf import app_settings
from .models import LicenseActivation, LicenseKey, Purchase

VERSION = 1
#: version, product id, key id, issue day.
PAYLOAD = struct.Struct(">BI12sI")
SIGNATURE_SIZE = 64
KEY_BYTES = PAYLOAD.size + SIGNATURE_SIZE  # 85: base32 without padding, 136 characters
GROUP = 8
EPOCH = datetime.date(1970, 1, 1)
INSTANCE_MAX = 200

VALID, ACTIVATED, RELEASED, NOT_ACTIVE = "valid", "activated", "released", "not_active"
INVALID, REVOKED, LIMIT_REACHED, BAD_REQUEST = "invalid", "revoked", "limit_reached", "bad_request"
HTTP_STATUS = {
    VALID: 200,
    ACTIVATED: 200,
    RELEASED: 200,
    NOT_ACTIVE: 200,
    INVALID: 404,
    REVOKED: 403,
    LIMIT_REACHED: 409,
    BAD_REQUEST: 400,
}


class SigningKeyError(ValueError):
    """``LICENSE_SIGNING_KEY`` is not an Ed25519 private key."""


# Keys ------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_private_key(value: str) -> Ed25519PrivateKey:
    """``value`` as PEM (PKCS#8) or as the base64 of the 32 raw private bytes."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SigningKeyError(str(exc)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("not an Ed25519 key")
    return key


def signing_key() -> Ed25519PrivateKey | None:
    """The configured private key; None when ``LICENSE_SIGNING_KEY`` is unset or not a key."""
    value = app_settings.LICENSE_SIGNING_KEY
    if not value:
        return None
    try:
        return load_private_key(str(value))
    except SigningKeyError:
        return None  # E050 says so at start-up


def generate_signing_key() -> str:
    """A new private key in the base64 form ``LICENSE_SIGNING_KEY`` takes."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return base64.b64encode(raw).decode()


def public_key_base64(private: Ed25519PrivateKey | None = None) -> str:
    """The public key apps embed: the base64 of its 32 raw bytes ("" without a signing key)."""
    key = private or signing_key()
    if key is None:
        return ""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_pem() -> str:
    key = signing_key()
    if key is None:
        return ""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def load_public_key(text: Any) -> Ed25519PublicKey | None:
    """A public key given as the base64 of its 32 raw bytes; None when it is not one."""
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(str(text), validate=True))
    except (ValueError, TypeError, binascii.Error):
        return None


def is_public_key(text: Any) -> bool:
    return load_public_key(text) is not None


def _verifying_keys() -> list[Ed25519PublicKey]:
    """The current key's public half, then the retired ones (rotation)."""
    current = signing_key()
    keys = [current.public_key()] if current is not None else []
    retired = (load_public_key(t) for t in app_settings.LICENSE_RETIRED_PUBLIC_KEYS or [])
    return keys + [key for key in retired if key is not None]


# Key text --------------------------------------------------------------------------------------


def _payload(license: LicenseKey) -> bytes:
    day = (license.issued_on - EPOCH).days
    return PAYLOAD.pack(VERSION, license.product_id, bytes.fromhex(license.key_id), day)


def key_text(license: LicenseKey | None) -> str:
    """The key as buyers copy it; "" without a signing key."""
    key = signing_key()
    if license is None or key is None:
        return ""
    payload = _payload(license)
    encoded = base64.b32encode(payload + key.sign(payload)).decode()
    return "-".join(encoded[i : i + GROUP] for i in range(0, len(encoded), GROUP))


@dataclass(frozen=True)
class KeyFacts:
    """What a verified key says."""

    product_id: int
    key_id: str
    issued_on: datetime.date


def _decode(text: Any) -> bytes | None:
    if not isinstance(text, str) or len(text) > 4 * KEY_BYTES:
        return None
    compact = "".join(text.split()).replace("-", "").upper()
    if len(compact) != KEY_BYTES * 8 // 5:
        return None
    try:
        return base64.b32decode(compact)
    except (binascii.Error, ValueError):
        return None


def verify_offline(text: Any, public_keys: list[Ed25519PublicKey]) -> KeyFacts | None:
    """What an app does without the network: decode, check the signature, read the payload."""
    raw = _decode(text)
    if raw is None or len(raw) != KEY_BYTES:
        return None
    payload, signature = raw[: PAYLOAD.size], raw[PAYLOAD.size :]
    for public in public_keys:
        try:
            public.verify(signature, payload)
        except InvalidSignature:
            continue
        version, product_id, key_id, day = PAYLOAD.unpack(payload)
        if version != VERSION:
            return None
        return KeyFacts(product_id, key_id.hex(), EPOCH + datetime.timedelta(days=day))
    return None


# Issuing ---------------------------------------------------------------------------------------


def issue(purchase: Purchase) -> LicenseKey | None:
    """The purchase's key, made on its first payment; None when its product sells none.

    Called inside the paying transaction (``fulfillment``): a key exists exactly when the
    payment is recorded, and a second delivery of the same purchase finds the first key.
    """
    product = purchase.product_page
    limit = getattr(product, "license_activation_limit", None)
    if product is None or limit is None:
        return None
    license, _created = LicenseKey.objects.get_or_create(
        purchase=purchase,
        defaults={
            "key_id": secrets.token_bytes(12).hex(),
            "product_id": product.pk,
            "issued_on": timezone.now().date(),
            "activation_limit": limit,
        },
    )
    return license


def license_of(purchase: Purchase) -> LicenseKey | None:
    try:
        return purchase.license_key  # type: ignore[attr-defined,no-any-return]
    except LicenseKey.DoesNotExist:
        return None


# The endpoint's answers ------------------------------------------------------------------------


@dataclass
class Answer:
    status: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.status]

    def json(self) -> dict[str, Any]:
        return {"status": self.status, **self.body}


def _find(text: Any) -> LicenseKey | None:
    facts = verify_offline(text, _verifying_keys())
    if facts is None:
        return None
    license = LicenseKey.objects.select_related("purchase").filter(key_id=facts.key_id).first()
    if license is None or license.product_id != facts.product_id:
        return None
    return license


def _live(license: LicenseKey) -> Any:
    return license.activations.filter(released_at=None)  # type: ignore[attr-defined]


def _facts(license: LicenseKey, instance: str) -> dict[str, Any]:
    live = _live(license)
    return {
        "product_id": license.product_id,
        "issued_on": license.issued_on.isoformat(),
        "activation_limit": license.activation_limit or None,
        "activations": live.count(),
        "active_on_instance": bool(instance) and live.filter(instance_id=instance).exists(),
    }


def clean_instance(value: Any) -> str | None:
    """The instance id an app sent, or None when it is not a short printable string."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > INSTANCE_MAX or not value.isprintable():
        return None
    return value


def answer(action: str, key: Any, instance: str) -> Answer:
    """``validate``, ``activate`` or ``deactivate`` ``key`` (for ``instance``)."""
    license = _find(key)
    if license is None:
        return Answer(INVALID)
    if license.purchase.status != Purchase.Status.PAID:
        return Answer(REVOKED)
    if action == "activate":
        return _activate(license, instance)
    if action == "deactivate":
        released = release(license, instance, LicenseActivation.ReleasedBy.CLIENT)
        return Answer(RELEASED if released else NOT_ACTIVE, _facts(license, instance))
    return Answer(VALID, _facts(license, instance))


def _activate(license: LicenseKey, instance: str) -> Answer:
    with transaction.atomic():
        # The key's row lock: two instances activating at once count one after the other.
        LicenseKey.objects.select_for_update().filter(pk=license.pk).first()
        live = _live(license)
        if not live.filter(instance_id=instance).exists():
            if license.activation_limit and live.count() >= license.activation_limit:
                return Answer(LIMIT_REACHED, _facts(license, instance))
            LicenseActivation.objects.create(license=license, instance_id=instance)
    return Answer(ACTIVATED, _facts(license, instance))


def release(license: LicenseKey, instance: str, by: str) -> bool:
    """Free ``instance``'s seat; False when it held none."""
    released = (
        _live(license)
        .filter(instance_id=instance)
        .update(released_at=timezone.now(), released_by=by)
    )
    return bool(released)
