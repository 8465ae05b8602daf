"""What can happen to a Checkout Session after it is created, and the events Stripe then sends.

Shared by the hosted page (Pay, Pay later, Fail), the emulator dashboard (refund, dispute…) and
the control endpoint behind this app's ``manage.py trigger``. Each action changes the session's
state under a row lock, then returns the ``(event type, object)`` pairs Stripe would deliver,
built from the state just written; the caller sends them once the change is committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from .models import EmulatedSession, new_id

Events = list[tuple[str, dict[str, Any]]]

#: The test card the hosted page's Fail button stands for.
DECLINED = "Your card was declined. (emulated: card 4000 0000 0000 0002)"
BANK_DEBIT_FAILED = "The bank debit was returned: insufficient funds. (emulated)"


class ActionRefused(Exception):
    """The action does not apply to the session in its current state (Stripe would say 400)."""


def _session_event(session: EmulatedSession, type_: str) -> tuple[str, dict[str, Any]]:
    return type_, session.as_stripe()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ActionRefused(message)


def _start_payment(
    session: EmulatedSession, email: str, promotion_code: str = "", amount: int | None = None
) -> None:
    _require(session.status == "open", f"the session is {session.status}, not open")
    try:
        if amount is not None:  # the hosted page's, or the control API's (a string)
            session.choose_amount(int(amount))
        session.apply_totals(promotion_code)
    except ValueError as exc:
        raise ActionRefused(str(exc)) from None
    session.email = email or session.customer_email or session.email
    session.payment_intent_id = session.payment_intent_id or new_id("pi")
    session.payment_error = ""


def _charge(session: EmulatedSession) -> None:
    session.payment_intent_status = "succeeded"
    session.payment_status = "paid"
    session.charge_id = new_id("ch")
    session.charge_created = timezone.now()


def pay(
    session: EmulatedSession,
    email: str = "",
    promotion_code: str = "",
    amount: int | None = None,
    **_: Any,
) -> Events:
    """A card payment: the session completes paid (``amount``: what the buyer chose, for a
    pay-what-you-want Price)."""
    _start_payment(session, email, promotion_code, amount)
    _require(bool(session.email), "an email address is needed")
    session.status = "complete"
    session.completed_at = timezone.now()
    _charge(session)
    return [
        _session_event(session, "checkout.session.completed"),
        ("payment_intent.succeeded", session.payment_intent() or {}),
    ]


def pay_later(
    session: EmulatedSession,
    email: str = "",
    promotion_code: str = "",
    amount: int | None = None,
    **_: Any,
) -> Events:
    """An asynchronous method (a bank debit): the session completes, the money follows."""
    _start_payment(session, email, promotion_code, amount)
    _require(bool(session.email), "an email address is needed")
    session.status = "complete"
    session.completed_at = timezone.now()
    session.payment_status = "unpaid"
    session.payment_intent_status = "processing"
    return [_session_event(session, "checkout.session.completed")]


def _processing(session: EmulatedSession) -> None:
    _require(
        session.status == "complete" and session.pi_status == "processing",
        "only a session paid later (a bank debit still processing) can succeed or fail",
    )


def succeed(session: EmulatedSession, **_: Any) -> Events:
    _processing(session)
    _charge(session)
    return [
        _session_event(session, "checkout.session.async_payment_succeeded"),
        ("payment_intent.succeeded", session.payment_intent() or {}),
    ]


def fail(session: EmulatedSession, **_: Any) -> Events:
    _processing(session)
    session.payment_intent_status = "requires_payment_method"
    session.payment_error = BANK_DEBIT_FAILED
    return [
        _session_event(session, "checkout.session.async_payment_failed"),
        ("payment_intent.payment_failed", session.payment_intent() or {}),
    ]


def decline(
    session: EmulatedSession, email: str = "", promotion_code: str = "", **_: Any
) -> Events:
    """The card is declined: the session stays open and the buyer may try again."""
    _start_payment(session, email, promotion_code)
    session.payment_intent_status = "requires_payment_method"
    session.payment_error = DECLINED
    return [("payment_intent.payment_failed", session.payment_intent() or {})]


def expire(session: EmulatedSession, **_: Any) -> Events:
    _require(session.status == "open", f"the session is {session.status}, not open")
    session.status = "expired"
    return [_session_event(session, "checkout.session.expired")]


def _paid(session: EmulatedSession) -> None:
    _require(
        session.payment_status == "paid" and bool(session.latest_charge_id),
        "the session has no successful payment",
    )


#: The reasons Stripe accepts on a refund.
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def refund(
    session: EmulatedSession,
    amount: Any = None,
    reason: Any = "requested_by_customer",
    metadata: Any = None,
    **_: Any,
) -> Events:
    """Refund the charge in full, or ``amount`` (minor units) of what is left. Stripe sends
    ``refund.created`` (the refund) and ``charge.refunded`` (the charge, its refunds listed)."""
    _paid(session)
    _require(session.dispute_status != "lost", "the payment was lost to a dispute")
    _require(not session.dispute_open, f"charge {session.latest_charge_id} is disputed")
    _require(reason in (None, *REFUND_REASONS), f"invalid reason {reason!r}")
    left = session.amount_total - session.amount_refunded
    try:
        value = left if amount in (None, "") else int(amount)
    except (TypeError, ValueError):
        raise ActionRefused(f"amount {amount!r} is not a whole number") from None
    _require(0 < value <= left, f"cannot refund {value}: {left} left to refund")
    session.charge_id = session.latest_charge_id
    session.amount_refunded += value
    made = {
        "id": new_id("re"),
        "object": "refund",
        "amount": value,
        "balance_transaction": None,
        "charge": session.charge_id,
        "created": int(time.time()),
        "currency": session.currency,
        "destination_details": {"card": {"type": "reversal"}, "type": "card"},
        "metadata": dict(metadata) if isinstance(metadata, dict) else {},
        "payment_intent": session.payment_intent_id,
        "reason": reason,
        "receipt_number": None,
        "status": "succeeded",
    }
    session.refunds = [made, *session.refunds]
    return [("refund.created", made), ("charge.refunded", session.charge() or {})]


def create_refund(
    payment_intent_id: str, params: dict[str, Any], key: str | None, body: str
) -> tuple[EmulatedSession, dict[str, Any], Events]:
    """``POST /v1/refunds``: the refund and its events, or, for an idempotency key seen
    before with the same body, the refund it made then (no events). Raises ``LookupError``
    (no such PaymentIntent) or ``ActionRefused`` (Stripe's 400; an idempotency key reused
    with other parameters too)."""
    with transaction.atomic():
        session = (
            EmulatedSession.objects.select_for_update()
            .filter(payment_intent_id=payment_intent_id)
            .first()
        )
        if session is None:
            raise LookupError(payment_intent_id)
        if key and key in session.refund_requests:
            seen, refund_id = session.refund_requests[key]
            _require(seen == body, "idempotency key reused with other parameters")
            return session, next(r for r in session.refunds if r["id"] == refund_id), []
        events = refund(
            session,
            amount=params.get("amount"),
            reason=params.get("reason"),
            metadata=params.get("metadata"),
        )
        made = events[0][1]
        if key:
            session.refund_requests = {**session.refund_requests, key: [body, made["id"]]}
        session.save()
    return session, made, events


def dispute(session: EmulatedSession, **_: Any) -> Events:
    _paid(session)
    _require(not session.dispute_id, "the charge is already disputed")
    _require(not session.refunded, "the charge is refunded in full")
    session.charge_id = session.latest_charge_id
    session.dispute_id = new_id("dp")
    session.dispute_status = "needs_response"
    session.dispute_created = timezone.now()
    return [("charge.dispute.created", session.dispute() or {})]


def _close(session: EmulatedSession, status: str) -> Events:
    _require(session.dispute_open, "there is no open dispute")
    session.dispute_status = status
    return [("charge.dispute.closed", session.dispute() or {})]


def win(session: EmulatedSession, **_: Any) -> Events:
    return _close(session, "won")


def lose(session: EmulatedSession, **_: Any) -> Events:
    return _close(session, "lost")


ACTIONS: dict[str, Callable[..., Events]] = {
    "pay": pay,
    "pay_later": pay_later,
    "succeed": succeed,
    "fail": fail,
    "decline": decline,
    "expire": expire,
    "refund": refund,
    "dispute": dispute,
    "win": win,
    "lose": lose,
}


#: What the dashboard offers for a session, by the session's state.
def available(session: EmulatedSession) -> list[str]:
    if session.status == "open":
        return ["pay", "pay_later", "decline", "expire"]
    if session.status != "complete":
        return []
    if session.pi_status == "processing":
        return ["succeed", "fail"]
    if session.payment_status != "paid" or session.dispute_status == "lost":
        return []
    if session.dispute_open:
        return ["win", "lose"]
    offered = [] if session.refunded else ["refund", "refund_partial"]
    if not session.dispute_id and not session.refunded:
        offered.append("dispute")
    return offered


def perform(session_id: str, action: str, params: dict[str, Any]) -> tuple[EmulatedSession, Events]:
    """Run ``action`` on the session under a row lock; raises ``ActionRefused`` or LookupError.

    The events are returned for the caller to deliver once this has committed.
    """
    function = ACTIONS.get(action)
    if function is None:
        raise ActionRefused(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    with transaction.atomic():
        session = EmulatedSession.objects.select_for_update().filter(pk=session_id).first()
        if session is None:
            raise LookupError(session_id)
        events = function(session, **params)
        session.save()
    return session, events
