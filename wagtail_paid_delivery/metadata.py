"""The metadata contract: what our Checkout Sessions carry in Stripe, and how it is read back.

Checkout writes these keys on the session, its PaymentIntent and (with invoice creation) its
invoice; the webhook inbox and fulfillment read them to tell this installation's payments from
other integrations' on the same Stripe account. Its own module because both sides need it and
checkout itself calls into fulfillment.
"""

from __future__ import annotations

import uuid
from typing import Any

from .conf import app_settings

#: Which site made the session (``INSTALLATION_ID``).
INSTALLATION = "wpd_installation"
#: The Purchase's public id, also sent as the session's ``client_reference_id``.
PURCHASE = "wpd_purchase"
#: The product page's id, for people reading the Stripe Dashboard.
PRODUCT = "wpd_product"


def for_purchase(purchase_public_id: Any, product_id: Any) -> dict[str, str]:
    """The metadata checkout writes for one purchase."""
    return {
        INSTALLATION: app_settings.installation_id,
        PURCHASE: str(purchase_public_id),
        PRODUCT: str(product_id),
    }


def as_dict(value: Any) -> dict[str, Any]:
    """A metadata value as a plain dict, from a Stripe object, a dict or nothing."""
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return dict(value.to_dict())
    return dict(value) if isinstance(value, dict) else {}


def is_ours(metadata: Any) -> bool:
    """Whether ``metadata`` was written by this installation."""
    return as_dict(metadata).get(INSTALLATION) == app_settings.installation_id


def parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def purchase_id(metadata: Any) -> uuid.UUID | None:
    """The purchase public id named in ``metadata``, or None when it is missing or malformed."""
    return parse_uuid(as_dict(metadata).get(PURCHASE))
