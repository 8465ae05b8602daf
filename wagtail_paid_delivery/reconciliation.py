"""Reconciliation: ask Stripe about purchases whose webhooks may never have come.

A shop whose webhook endpoint was wrong or disabled heals itself: every pending purchase
younger than a session's lifetime (plus a margin) is passed through ``fulfill_checkout`` (paid →
fulfilled; expired → expired; failed → failed), the longest unchecked first.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from . import fulfillment, stripe_api
from .models import Purchase

logger = logging.getLogger(__name__)

#: Pending purchases checked per run (each costs one or two Stripe calls).
RECONCILE_BATCH = 50
#: How far back reconciliation looks: a Checkout Session lives 24 hours, plus a margin so a
#: session that just expired is seen expired once.
RECONCILE_WINDOW = timedelta(hours=25)
#: Purchases younger than this are left to the buyer's browser and the webhook.
RECONCILE_MIN_AGE = timedelta(minutes=2)


def reconcile_pending() -> str:
    """Pass up to ``RECONCILE_BATCH`` of our pending purchases through ``fulfill_checkout``.

    Returns a summary; stops early when Stripe is down.
    """
    now = timezone.now()
    pending = (
        Purchase.objects.filter(
            status=Purchase.Status.PENDING,
            source=Purchase.Source.CHECKOUT,
            created_at__gte=now - RECONCILE_WINDOW,
            created_at__lte=now - RECONCILE_MIN_AGE,
        )
        .exclude(stripe_checkout_session_id=None)
        .exclude(stripe_checkout_session_id="")
        .order_by("updated_at")
        .values_list("pk", "stripe_checkout_session_id")[:RECONCILE_BATCH]
    )
    counts: dict[str, int] = {}
    for pk, session_id in pending:
        try:
            outcome = _reconcile_one(pk, str(session_id))
        except stripe_api.StripeUnavailable as exc:
            logger.warning("Reconciliation stopped, Stripe is unavailable: %s", exc)
            counts["stripe unavailable"] = 1
            break
        counts[outcome] = counts.get(outcome, 0) + 1
        # Checked now: the next run starts with the others.
        Purchase.objects.filter(pk=pk).update(updated_at=timezone.now())
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing pending"


def _reconcile_one(pk: int, session_id: str) -> str:
    try:
        result = fulfillment.fulfill_checkout(session_id)
    except stripe_api.StripeRefused as exc:
        logger.error("Reconciliation: Stripe refused session %s: %s", session_id, exc)
        return "error"
    if result.outcome == "fulfilled":
        logger.warning(
            "Reconciliation fulfilled purchase %s (session %s) that no webhook had: "
            "check the Stripe webhook endpoint.",
            pk,
            session_id,
        )
    return result.outcome
