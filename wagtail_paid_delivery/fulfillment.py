"""The purchase state machine: the only code that moves a Purchase between states.

``fulfill_checkout`` is the one door to a paid Purchase. The webhook task, the success page and
reconciliation all call it, in any order and any number of times, and the buyer is fulfilled
once: Stripe is asked first (outside any transaction), then the Purchase row is locked and
changed only if it is still waiting. ``purchase_paid`` is sent on commit, so a receiver never
sees a payment that was rolled back.

States follow DESIGN "Purchase states": ``pending`` → ``paid`` only here; ``paid`` →
``refunded`` or ``revoked`` (both final) or ``disputed`` (suspended) → back to ``paid``.
Events are notifications: whatever event arrives, the current state is re-read from Stripe
(``payment_state``) and the purchase moved towards it, so their order does not matter.
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

Outcome = Literal[
    "fulfilled",  # now paid (purchase_paid sent)
    "already_paid",  # was paid, still is
    "not_paid",  # Stripe has no money yet (asynchronous payment clearing, session open)
    "refused",  # Stripe says paid, but this purchase may not become paid (see reason)
    "not_ours",  # not this installation's session, or no matching purchase
    "failed",  # the asynchronous payment failed: purchase marked failed
    "expired",  # the session expired unpaid: purchase marked expired
    "refunded",  # refunded in full (or by policy, in part) or a dispute lost: final
    "disputed",  # an open dispute: access suspended (DISPUTE_POLICY "suspend")
    "restored",  # a dispute was won: access given back
    "partially_refunded",  # a partial refund recorded; access kept (PARTIAL_REFUND_POLICY)
]

#: Checkout Session payment statuses that mean the money is in (or none was due).
PAID_STATUSES = frozenset({"paid", "no_payment_required"})

#: States a payment never brings back: the buyer was refunded, or an editor revoked access.
FINAL_STATES = frozenset({Purchase.Status.REFUNDED, Purchase.Status.REVOKED})

#: Dispute statuses after which the seller keeps the money (an inquiry closed counts too).
DISPUTE_WON = frozenset({"won", "warning_closed"})
DISPUTE_LOST = frozenset({"lost"})

#: PaymentIntent statuses that, on a completed but unpaid session, mean the payment failed.
PAYMENT_FAILED = frozenset({"requires_payment_method", "canceled"})

StripeState = Literal["paid", "pending", "failed", "expired", "refunded", "disputed"]


@dataclass(frozen=True)
class FulfillmentResult:
    """What ``fulfill_checkout`` did. ``purchase`` is None only when the session is not ours."""

    purchase: Purchase | None
    outcome: Outcome
    #: Why the outcome is not ``fulfilled``, for logs and the events list.
    reason: str = ""

    @property
    def is_paid(self) -> bool:
        return self.outcome in ("fulfilled", "already_paid", "restored", "partially_refunded")


@dataclass(frozen=True)
class PaymentState:
    """What Stripe says about the money behind a Checkout Session, re-read every time."""

    state: StripeState
    reason: str = ""
    #: The charge's refunded amount (minor units), when Stripe reported one.
    amount_refunded: int = 0
    #: Paid, and a dispute on the payment was closed in the seller's favour.
    dispute_won: bool = False
    payment_intent_id: str = ""


def payment_state(session: Any) -> PaymentState:
    """Derive our view of a session's payment from Stripe's current objects.

    Order of webhooks does not matter because nothing here reads an event: the session (with
    its PaymentIntent), the PaymentIntent's latest charge (refunded? disputed?) and, only for a
    disputed charge, its disputes. Raises ``StripeUnavailable`` or ``stripe.StripeError``.
    """
    payment_intent = getattr(session, "payment_intent", None)
    pi_id = str(getattr(payment_intent, "id", payment_intent) or "")
    if session.payment_status not in PAID_STATUSES:
        if session.status == "expired":
            return PaymentState("expired", "the Checkout Session expired unpaid", 0, False, pi_id)
        pi_status = getattr(payment_intent, "status", None)
        if session.status == "complete" and pi_status in PAYMENT_FAILED:
            error = getattr(payment_intent, "last_payment_error", None)
            message = getattr(error, "message", None) or "the payment did not go through"
            return PaymentState("failed", f"Payment failed: {message}", 0, False, pi_id)
        return PaymentState("pending", f"payment_status {session.payment_status}", 0, False, pi_id)
    if not pi_id:
        return PaymentState("paid")  # no_payment_required: nothing to refund or dispute

    intent = stripe_api.retrieve_payment_intent(pi_id)
    charge = getattr(intent, "latest_charge", None)
    if charge is None or isinstance(charge, str):
        return PaymentState("paid", payment_intent_id=pi_id)
    amount = int(getattr(charge, "amount", 0) or 0)
    refunded = int(getattr(charge, "amount_refunded", 0) or 0)
    if getattr(charge, "refunded", False) or (amount and refunded >= amount):
        return PaymentState("refunded", "Refunded in full.", refunded, False, pi_id)

    dispute_won = False
    if getattr(charge, "disputed", False):
        disputes = stripe_api.list_disputes_for_payment_intent(pi_id)
        latest = disputes[0] if disputes else None
        status = str(getattr(latest, "status", "") or "")
        dispute_id = getattr(latest, "id", "")
        if status in DISPUTE_LOST:
            reason = f"Dispute {dispute_id} lost: the payment was returned to the buyer."
            return PaymentState("refunded", reason, refunded, False, pi_id)
        if status in DISPUTE_WON:
            dispute_won = True
        elif latest is not None and app_settings.DISPUTE_POLICY != "ignore":
            reason = f"Dispute {dispute_id} is {status}: access suspended until it is won."
            return PaymentState("disputed", reason, refunded, False, pi_id)

    if refunded and app_settings.PARTIAL_REFUND_POLICY == "revoke":
        reason = f"Partially refunded ({refunded} of {amount}); PARTIAL_REFUND_POLICY is revoke."
        return PaymentState("refunded", reason, refunded, False, pi_id)
    return PaymentState("paid", "", refunded, dispute_won, pi_id)


def fulfill_checkout(session_id: str) -> FulfillmentResult:
    """Bring the Purchase behind Checkout Session ``session_id`` in line with Stripe, once.

    The one door to a paid Purchase (DESIGN "Purchase states"): paid only if the payment has
    not been refunded or disputed; an expired session or a failed asynchronous payment marks a
    pending purchase expired or failed; a refund or a lost dispute makes it refunded (final); an
    open dispute suspends it and a won one restores it. An editor's revoke is never undone.

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

    state = payment_state(session)
    details = getattr(session, "customer_details", None)
    email = getattr(details, "email", None) or getattr(session, "customer_email", None) or ""
    if state.state == "pending":
        # Asynchronous methods complete the session before the money arrives;
        # checkout.session.async_payment_succeeded brings us back here. The buyer's address is
        # kept already: the "processing" page tells them where the link will go.
        if email and not purchase.email:
            Purchase.objects.filter(pk=purchase.pk, email="").update(
                email=email, updated_at=timezone.now()
            )
            purchase.email = email
        return FulfillmentResult(purchase, "not_paid", state.reason)

    problems = line_item_problems(session, purchase) if state.state == "paid" else []

    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        fields = {"updated_at"}
        if state.payment_intent_id and not locked.stripe_payment_intent_id:
            locked.stripe_payment_intent_id = state.payment_intent_id
            fields.add("stripe_payment_intent_id")
        if not locked.stripe_checkout_session_id:
            locked.stripe_checkout_session_id = session.id
            fields.add("stripe_checkout_session_id")
        if email and not locked.email:
            locked.email = email
            fields.add("email")
        refund_grew = state.amount_refunded > locked.amount_refunded
        if refund_grew:
            locked.amount_refunded = state.amount_refunded
            fields.add("amount_refunded")
        result = _apply(locked, session, state, problems, email, fields)
        if len(fields) > 1:
            locked.save(update_fields=sorted(fields))
        if refund_grew and result.outcome == "already_paid":
            result = FulfillmentResult(locked, "partially_refunded", state.reason)
    if result.outcome == "fulfilled":
        logger.info("Purchase %s paid (session %s)", locked.public_id, session.id)
    elif result.outcome in ("refunded", "disputed", "restored", "failed", "expired"):
        logger.info("Purchase %s %s: %s", locked.public_id, result.outcome, result.reason)
    return result


def _apply(
    locked: Purchase,
    session: Any,
    state: PaymentState,
    problems: list[str],
    email: str,
    fields: set[str],
) -> FulfillmentResult:
    """Move the locked purchase to what Stripe says, within DESIGN's state rules."""
    status = locked.status
    Status = Purchase.Status
    now = timezone.now()
    if status == Status.REVOKED:
        return FulfillmentResult(locked, "refused", "revoked by an editor; no webhook undoes it")
    if status == Status.REFUNDED:
        reason = "purchase is refunded; a payment does not bring it back"
        return FulfillmentResult(locked, "refused", reason)

    if state.state in ("expired", "failed"):
        if status != Status.PENDING:
            return FulfillmentResult(locked, "not_paid", f"{state.reason} (purchase {status})")
        new = Status.EXPIRED if state.state == "expired" else Status.FAILED
        _set_status(locked, new, state.reason, now, fields)
        return FulfillmentResult(locked, state.state, state.reason)

    if state.state == "refunded":
        had_access = status in (Status.PAID, Status.DISPUTED) and locked.paid_at is not None
        _set_status(locked, Status.REFUNDED, state.reason, now, fields)
        DownloadLink.objects.filter(purchase=locked, revoked_at=None).update(revoked_at=now)
        if had_access:
            _send_revoked(locked, state.reason)
        return FulfillmentResult(locked, "refunded", state.reason)

    if state.state == "disputed":
        if status == Status.DISPUTED:
            return FulfillmentResult(locked, "disputed", state.reason)
        if status == Status.FAILED:
            return FulfillmentResult(locked, "refused", locked.status_reason or "purchase failed")
        # Paid: suspended. Not paid yet (the dispute came first): held until it is won.
        _set_status(locked, Status.DISPUTED, state.reason, now, fields)
        if status == Status.PAID:
            _send_revoked(locked, state.reason)
        return FulfillmentResult(locked, "disputed", state.reason)

    # Stripe says paid.
    if status == Status.PAID:
        if locked.stripe_checkout_session_id not in (None, "", session.id):
            # The same purchase paid through two sessions: a refund is due, not a delivery.
            logger.error(
                "Purchase %s already paid by %s; session %s paid again",
                locked.public_id,
                locked.stripe_checkout_session_id,
                session.id,
            )
        return FulfillmentResult(locked, "already_paid")
    if status == Status.DISPUTED:
        if not state.dispute_won:
            reason = f"purchase is {status}; a payment does not bring it back"
            return FulfillmentResult(locked, "refused", reason)
        if locked.paid_at is not None:
            locked.status = Status.PAID
            locked.status_reason = ""
            fields.update({"status", "status_reason"})
            transaction.on_commit(
                lambda: signals.purchase_restored.send(sender=Purchase, purchase=locked)
            )
            return FulfillmentResult(locked, "restored", "dispute won")
        # Disputed before it was ever paid, and the dispute is won: deliver now, below.
    if status == Status.FAILED:
        return FulfillmentResult(locked, "refused", locked.status_reason or "purchase failed")

    locked.email = email or locked.email
    locked.livemode = bool(session.livemode)
    fields.update({"email", "livemode"})
    if problems:
        # Stripe charged for something other than what we sold: never deliver it.
        reason = "Line items do not match the purchase: " + "; ".join(problems)
        _set_status(locked, Status.FAILED, reason, now, fields)
        logger.error("Refused Checkout Session %s: %s", session.id, reason)
        return FulfillmentResult(locked, "refused", reason)

    if status == Status.EXPIRED:
        # Stripe says the money is in: it is the truth, whatever our sweep concluded.
        logger.warning("Purchase %s was expired and is now paid", locked.public_id)
    _set_status(locked, Status.PAID, "", now, fields)
    transaction.on_commit(lambda: signals.purchase_paid.send(sender=Purchase, purchase=locked))
    return FulfillmentResult(locked, "fulfilled")


_TIMESTAMPS = {
    Purchase.Status.PAID: "paid_at",
    Purchase.Status.FAILED: "failed_at",
    Purchase.Status.EXPIRED: "expired_at",
    Purchase.Status.REFUNDED: "refunded_at",
    Purchase.Status.DISPUTED: "disputed_at",
    Purchase.Status.REVOKED: "revoked_at",
}


def _set_status(purchase: Purchase, status: str, reason: str, now: Any, fields: set[str]) -> None:
    timestamp = _TIMESTAMPS[Purchase.Status(status)]
    purchase.status = status
    purchase.status_reason = reason
    setattr(purchase, timestamp, now)
    fields.update({"status", "status_reason", timestamp})


def _send_revoked(purchase: Purchase, reason: str) -> None:
    transaction.on_commit(
        lambda: signals.purchase_revoked.send(sender=Purchase, purchase=purchase, reason=reason)
    )


def sync_payment_intent(payment_intent_id: str) -> FulfillmentResult:
    """Bring the Purchase paid through ``payment_intent_id`` in line with Stripe.

    For events that carry a PaymentIntent, a charge or a dispute rather than a session. The
    session is found from our own Purchase (``stripe_payment_intent_id``), else from the
    PaymentIntent's metadata (``wpd_installation``/``wpd_purchase``, written by checkout through
    ``payment_intent_data``), else by asking Stripe which session created the PaymentIntent.
    Then ``fulfill_checkout`` re-reads everything. Raises as ``fulfill_checkout`` does.
    """
    purchase = (
        Purchase.objects.filter(stripe_payment_intent_id=payment_intent_id)
        .exclude(stripe_checkout_session_id=None)
        .first()
    )
    if purchase is not None and purchase.stripe_checkout_session_id:
        return fulfill_checkout(purchase.stripe_checkout_session_id)
    intent = stripe_api.retrieve_payment_intent(payment_intent_id)
    metadata = _as_dict(getattr(intent, "metadata", None))
    if metadata.get("wpd_installation") != app_settings.installation_id:
        return FulfillmentResult(None, "not_ours", "not this installation's payment")
    return sync_purchase_reference(metadata.get("wpd_purchase"), payment_intent_id)


def sync_purchase_reference(public_id: Any, payment_intent_id: str = "") -> FulfillmentResult:
    """``fulfill_checkout`` for the purchase named in our metadata (``wpd_purchase``)."""
    uid = _parse_uuid(public_id)
    purchase = Purchase.objects.filter(public_id=uid).first() if uid else None
    if purchase is None:
        return FulfillmentResult(None, "not_ours", "no matching purchase")
    session_id = purchase.stripe_checkout_session_id
    if not session_id and payment_intent_id:
        sessions = stripe_api.list_checkout_sessions_for_payment_intent(payment_intent_id)
        session_id = sessions[0].id if sessions else None
    if not session_id:
        return FulfillmentResult(purchase, "not_paid", "no Checkout Session for this purchase")
    return fulfill_checkout(session_id)


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
