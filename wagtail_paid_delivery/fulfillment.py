"""The purchase state machine: the only code that moves a Purchase between states.

``fulfill_checkout`` is the one door to a paid Purchase. The webhook task, the success page and
reconciliation all call it, in any order and any number of times, and the buyer is fulfilled
once: Stripe is asked first (outside any transaction), then the Purchase row is locked and
changed only if it is still waiting. ``purchase_paid`` is sent on commit, so a receiver never
sees a payment that was rolled back.

States follow DESIGN "Purchase states": ``pending`` → ``paid`` only here; ``paid`` →
``refunded`` or ``revoked`` (both final) or ``disputed`` (suspended) → back to ``paid``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from . import signals, stripe_api
from .conf import app_settings
from .models import DownloadLink, Purchase

logger = logging.getLogger(__name__)

Outcome = Literal["fulfilled", "already_paid", "not_paid", "refused", "not_ours"]

#: Checkout Session payment statuses that mean the money is in (or none was due).
PAID_STATUSES = frozenset({"paid", "no_payment_required"})

#: States a payment never brings back: the buyer was refunded, or an editor revoked access.
FINAL_STATES = frozenset({Purchase.Status.REFUNDED, Purchase.Status.REVOKED})


@dataclass(frozen=True)
class FulfillmentResult:
    """What ``fulfill_checkout`` did. ``purchase`` is None only when the session is not ours."""

    purchase: Purchase | None
    outcome: Outcome
    #: Why the outcome is not ``fulfilled``, for logs and the events list.
    reason: str = ""

    @property
    def is_paid(self) -> bool:
        return self.outcome in ("fulfilled", "already_paid")


def fulfill_checkout(session_id: str) -> FulfillmentResult:
    """Make the Purchase behind Checkout Session ``session_id`` paid, exactly once.

    Raises ``stripe_api.StripeUnavailable`` when Stripe cannot be reached (nothing changed; call
    again later) and ``stripe.InvalidRequestError`` for a session Stripe does not know.
    Must not be called inside a transaction: it calls Stripe before taking its row lock.
    """
    session = stripe_api.retrieve_checkout_session(session_id)
    metadata = _as_dict(getattr(session, "metadata", None))

    if metadata.get("wpd_installation") != app_settings.installation_id:
        return FulfillmentResult(None, "not_ours", "not this installation's checkout session")
    public_id = _parse_uuid(metadata.get("wpd_purchase"))
    if public_id is None or _parse_uuid(session.client_reference_id) != public_id:
        logger.warning("Checkout Session %s: purchase ids in metadata do not agree", session.id)
        return FulfillmentResult(None, "not_ours", "purchase id missing or inconsistent")

    purchase = Purchase.objects.filter(stripe_checkout_session_id=session.id).first()
    if purchase is None:
        purchase = Purchase.objects.filter(public_id=public_id).first()
    if purchase is None or purchase.public_id != public_id:
        logger.error("Checkout Session %s: no matching purchase %s", session.id, public_id)
        return FulfillmentResult(None, "not_ours", "no matching purchase")

    if session.payment_status not in PAID_STATUSES:
        # Asynchronous methods complete the session before the money arrives;
        # checkout.session.async_payment_succeeded brings us back here.
        return FulfillmentResult(purchase, "not_paid", f"payment_status {session.payment_status}")

    problems = line_item_problems(session, purchase)
    payment_intent = getattr(session, "payment_intent", None)
    payment_intent_id = str(getattr(payment_intent, "id", payment_intent) or "")
    details = getattr(session, "customer_details", None)
    email = getattr(details, "email", None) or getattr(session, "customer_email", None) or ""

    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status == Purchase.Status.PAID:
            if locked.stripe_checkout_session_id not in (None, "", session.id):
                # The same purchase paid through two sessions: a refund is due, not a delivery.
                logger.error(
                    "Purchase %s already paid by %s; session %s paid again",
                    locked.public_id,
                    locked.stripe_checkout_session_id,
                    session.id,
                )
            return FulfillmentResult(locked, "already_paid")
        if locked.status in FINAL_STATES or locked.status == Purchase.Status.DISPUTED:
            reason = f"purchase is {locked.status}; a payment does not bring it back"
            return FulfillmentResult(locked, "refused", reason)
        if locked.status == Purchase.Status.FAILED:
            return FulfillmentResult(locked, "refused", locked.status_reason or "purchase failed")

        now = timezone.now()
        locked.email = email or locked.email
        locked.stripe_payment_intent_id = payment_intent_id or locked.stripe_payment_intent_id
        locked.livemode = bool(session.livemode)
        if not locked.stripe_checkout_session_id:
            locked.stripe_checkout_session_id = session.id
        fields = [
            "email",
            "stripe_payment_intent_id",
            "livemode",
            "stripe_checkout_session_id",
            "status",
            "status_reason",
            "updated_at",
        ]

        if problems:
            # Stripe charged for something other than what we sold: never deliver it.
            locked.status = Purchase.Status.FAILED
            locked.status_reason = "Line items do not match the purchase: " + "; ".join(problems)
            locked.failed_at = now
            locked.save(update_fields=[*fields, "failed_at"])
            logger.error("Refused Checkout Session %s: %s", session.id, locked.status_reason)
            return FulfillmentResult(locked, "refused", locked.status_reason)

        if locked.status == Purchase.Status.EXPIRED:
            # Stripe says the money is in: it is the truth, whatever our sweep concluded.
            logger.warning("Purchase %s was expired and is now paid", locked.public_id)
        locked.status = Purchase.Status.PAID
        locked.status_reason = ""
        locked.paid_at = now
        locked.save(update_fields=[*fields, "paid_at"])
        transaction.on_commit(lambda: signals.purchase_paid.send(sender=Purchase, purchase=locked))
    logger.info("Purchase %s paid (session %s)", locked.public_id, session.id)
    return FulfillmentResult(locked, "fulfilled")


def line_item_problems(session: Any, purchase: Purchase) -> list[str]:
    """How the session's line items differ from what ``purchase`` sold; empty when they agree.

    One line, quantity 1, the purchase's currency, and either the product's Stripe Price or an
    inline price of the purchase's amount. Totals are not compared: a promotion code lowers them.
    """
    line_items = getattr(session, "line_items", None)
    items = list(getattr(line_items, "data", None) or [])
    if getattr(line_items, "has_more", False) or len(items) != 1:
        return [f"expected 1 line item, got {len(items)}{'+' if line_items else ''}"]
    item = items[0]
    price = getattr(item, "price", None)
    problems = []
    if item.quantity != 1:
        problems.append(f"quantity {item.quantity} != 1")
    currency = str(getattr(item, "currency", None) or getattr(price, "currency", "") or "")
    if currency.lower() != purchase.currency.lower():
        problems.append(f"currency {currency} != {purchase.currency.lower()}")
    product = purchase.product.specific if purchase.product is not None else None
    expected_price_id = getattr(product, "stripe_price_id", "") or ""
    price_id = getattr(price, "id", None)
    if expected_price_id and price_id != expected_price_id:
        problems.append(f"price {price_id} != {expected_price_id}")
    unit_amount = getattr(price, "unit_amount", None)
    if unit_amount != purchase.amount:
        problems.append(f"unit amount {unit_amount} != {purchase.amount}")
    if getattr(item, "amount_subtotal", None) != purchase.amount:
        problems.append(f"subtotal {item.amount_subtotal} != {purchase.amount}")
    return problems


def revoke_purchase(
    purchase: Purchase, *, reason: str, status: Purchase.Status = Purchase.Status.REVOKED
) -> bool:
    """Take access away: ``revoked`` (an editor), ``refunded`` or ``disputed`` (Stripe).

    Idempotent: returns False when nothing changed. ``refunded`` and ``revoked`` are final and
    revoke the purchase's download links too; ``disputed`` only suspends (links are checked
    against the purchase at every use) and applies to a paid purchase only. ``purchase`` is
    updated in place. Sends ``purchase_revoked`` on commit.
    """
    if status not in (Purchase.Status.REVOKED, Purchase.Status.REFUNDED, Purchase.Status.DISPUTED):
        raise ValueError(f"revoke_purchase cannot set status {status!r}")
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status == status or locked.status in FINAL_STATES:
            _copy_state(locked, purchase)
            return False
        if status == Purchase.Status.DISPUTED and locked.status != Purchase.Status.PAID:
            logger.warning("Dispute on purchase %s in state %s", locked.public_id, locked.status)
            _copy_state(locked, purchase)
            return False
        now = timezone.now()
        locked.status = status
        locked.status_reason = reason
        timestamp = {
            Purchase.Status.REVOKED: "revoked_at",
            Purchase.Status.REFUNDED: "refunded_at",
            Purchase.Status.DISPUTED: "disputed_at",
        }[status]
        setattr(locked, timestamp, now)
        locked.save(update_fields=["status", "status_reason", timestamp, "updated_at"])
        if status in FINAL_STATES:
            DownloadLink.objects.filter(purchase=locked, revoked_at=None).update(revoked_at=now)
        transaction.on_commit(
            lambda: signals.purchase_revoked.send(sender=Purchase, purchase=locked, reason=reason)
        )
    _copy_state(locked, purchase)
    logger.info("Purchase %s %s: %s", locked.public_id, status, reason)
    return True


def restore_purchase(purchase: Purchase) -> bool:
    """Give a disputed purchase its access back (the dispute was won).

    Idempotent: returns False unless the purchase was ``disputed`` after being paid. Refunded
    and revoked purchases stay final. ``purchase`` is updated in place. Sends
    ``purchase_restored`` on commit.
    """
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status != Purchase.Status.DISPUTED or locked.paid_at is None:
            _copy_state(locked, purchase)
            return False
        locked.status = Purchase.Status.PAID
        locked.status_reason = ""
        locked.save(update_fields=["status", "status_reason", "updated_at"])
        transaction.on_commit(
            lambda: signals.purchase_restored.send(sender=Purchase, purchase=locked)
        )
    _copy_state(locked, purchase)
    logger.info("Purchase %s restored", locked.public_id)
    return True


def _copy_state(source: Purchase, target: Purchase) -> None:
    if source is target:
        return
    for name in (
        "status",
        "status_reason",
        "paid_at",
        "revoked_at",
        "refunded_at",
        "disputed_at",
        "failed_at",
        "updated_at",
    ):
        setattr(target, name, getattr(source, name))


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "to_dict"):
        return dict(value.to_dict())
    return dict(value) if isinstance(value, dict) else {}


def _parse_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
