"""The client side of the emulator's control endpoint (``manage.py trigger`` calls it).

``POST {STRIPE_API_BASE}/_emulator/sessions/<id>/<action>`` is not a Stripe endpoint, so it lives
here with the emulator rather than in the package's ``stripe_api``. It still goes through the
package's configured ``StripeClient`` (same secret key, API base, retries and, in tests, the
same HTTP client override), and reports an unreachable stand-in as the package's
``StripeUnavailable``, so callers handle the two outcomes the package documents.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from django.core.exceptions import ImproperlyConfigured

from wagtail_paid_delivery.conf import SETTINGS_NAME, app_settings
from wagtail_paid_delivery.stripe_api import StripeUnavailable, get_client

logger = logging.getLogger(__name__)


def emulator_control(session_id: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Ask the Stripe stand-in at ``STRIPE_API_BASE`` to act on a session as a buyer would.

    Authenticated with the secret key; the stand-in then sends the signed webhooks that follow.
    Real Stripe has no such endpoint (use the Stripe CLI and Dashboard there). Raises
    ``ImproperlyConfigured`` when ``STRIPE_API_BASE`` is not set, ``StripeUnavailable`` when the
    stand-in cannot be reached or fails, or ``stripe.StripeError`` for an action it refused.
    """
    if not app_settings.STRIPE_API_BASE:
        raise ImproperlyConfigured(
            f"{SETTINGS_NAME}['STRIPE_API_BASE'] is not set: there is no Stripe stand-in to "
            "drive (real Stripe: use the Stripe CLI or Dashboard)."
        )
    try:
        response = get_client().raw_request(
            "post", f"/_emulator/sessions/{session_id}/{action}", **params
        )
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise _unavailable(exc) from exc
    except stripe.APIError as exc:
        # APIError also covers unexpected 4xx answers; only server-side trouble is "unavailable".
        if exc.http_status is None or exc.http_status >= 500:
            raise _unavailable(exc) from exc
        raise
    data = json.loads(response.body)
    return data if isinstance(data, dict) else {}


def _unavailable(exc: stripe.StripeError) -> StripeUnavailable:
    # INFO: the caller says what failed, in a sentence (`trigger` names the host and port).
    logger.info("Stripe stand-in unavailable: %s", exc)
    return StripeUnavailable(str(exc.user_message or exc))
