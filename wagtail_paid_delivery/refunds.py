"""Refunds through Stripe, from the shop desk: how much is left, the call to Stripe's Refunds
API, and the purchase brought in line with Stripe's answer, once.

The rule is the one a refund made in Stripe's Dashboard follows, because it is the same code:
after Stripe accepted the refund, ``fulfillment.fulfill_checkout`` (the function the webhook's
task calls) re-reads the charge and moves the purchase through ``fulfillment.TRANSITIONS``. A
refund of everything that is left ends access for good (``refunded``, links revoked); a
partial refund records the amount refunded and keeps access, unless ``PARTIAL_REFUND_POLICY``
is ``"revoke"``. A revoked purchase stays revoked (its amount refunded is recorded). When Stripe
cannot be reached right after the refund, the purchase is left for the ``charge.refunded``
webhook (or reconciliation), which runs the same function; whichever comes second finds
nothing to do.

A confirmation sent twice refunds once: the confirmation form carries a random key, sent to
Stripe as the idempotency key (Stripe answers a repeated key with the refund it already made)
and kept in the refund's log entry (a key already logged is answered from the log, without
calling Stripe again). The log entry, one per Stripe refund, is written under the purchase's
row lock and names the editor: Wagtail's Site history and the purchase's timeline show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_lazy as _
from wagtail.log_actions import LogFormatter
from wagtail.log_actions import log as log_action
from wagtail.log_actions import registry as log_registry

from . import currencies, desk, fulfillment, metadata, payments, stripe_api
from .conf import app_settings
from .models import Purchase

#: A confirmation's key: 32 hexadecimal digits (128 random bits) made when the form is shown.
KEY = re.compile(r"[0-9a-f]{32}")

#: Stripe's refund reasons, in the shop's words (``stripe_api.REFUND_REASONS``).
REASONS = [
    ("requested_by_customer", _("Requested by the buyer")),
    ("duplicate", _("Duplicate payment")),
    ("fraudulent", _("Fraudulent (also blocks the card and email in Stripe Radar)")),
]


@dataclass(frozen=True)
class Refunded:
    """What a refund did."""

    #: Stripe's refund id (``re_…``).
    refund_id: str
    amount: int
    currency: str
    #: Stripe's refund status: ``succeeded``, ``pending`` (the bank has not confirmed yet),
    #: ``requires_action``, ``failed`` or ``canceled``.
    stripe_status: str
    #: ``fulfillment``'s outcome ("refunded", "partially_refunded", "refused"…), or "" when the
    #: purchase is left for the webhook (Stripe could not be asked again right away).
    outcome: str = ""
    #: True when this confirmation had already refunded (sent twice): nothing new happened.
    repeated: bool = False

    @property
    def display(self) -> str:
        return currencies.format_price(self.amount, self.currency)


def amount_left(purchase: Purchase) -> int:
    """What may still be refunded (minor units): what the buyer was charged, less what Stripe
    has refunded so far as far as we know (a refund made in Stripe's Dashboard counts once its
    webhook arrived; Stripe refuses anything beyond what is really left)."""
    charged = payments.amount_paid(purchase).amount
    return max(0, charged - purchase.amount_refunded)


def to_minor(amount: Any, currency: str) -> int | None:
    """A major-unit amount (Decimal, "12.50") in ``currency``'s minor units; None when it has
    more decimals than the currency has (0.5 JPY, 1.005 EUR)."""
    try:
        minor = Decimal(str(amount)).scaleb(currencies.exponent(currency))
    except InvalidOperation:
        return None
    if not minor.is_finite() or minor != minor.to_integral_value():
        return None
    return int(minor)


def _idempotency_key(purchase: Purchase, key: str) -> str:
    return f"wpd-refund-{purchase.public_id}-{key}"


def logged_refund(purchase: Purchase, *, key: str = "", refund_id: str = "") -> Any:
    """The refund log entry of ``purchase`` with this confirmation ``key`` or Stripe
    ``refund_id``; None when there is none."""
    entries = log_registry.get_logs_for_instance(purchase).filter(action=desk.REFUND)
    for entry in entries.order_by("pk"):
        data = entry.data or {}
        if (key and data.get("key") == key) or (refund_id and data.get("refund") == refund_id):
            return entry
    return None


def repeated(purchase: Purchase, key: str) -> Refunded | None:
    """The refund this confirmation ``key`` already made (it was sent twice); None if none."""
    entry = logged_refund(purchase, key=key) if KEY.fullmatch(key or "") else None
    if entry is None:
        return None
    data = entry.data or {}
    return Refunded(
        str(data.get("refund", "")),
        int(data.get("amount") or 0),
        str(data.get("currency", "")),
        str(data.get("stripe_status", "")),
        repeated=True,
    )


def check(purchase: Purchase, amount: int) -> None:
    """Raise ``desk.NotApplicable`` unless ``amount`` (minor units) may be refunded now."""
    why_not = desk.refusal(desk.REFUND, purchase)
    if why_not:
        raise desk.NotApplicable(why_not)
    left = amount_left(purchase)
    if amount <= 0:
        raise desk.NotApplicable(str(_("The amount to refund must be more than zero.")))
    if amount > left:
        raise desk.NotApplicable(
            str(_("%(amount)s is more than what is left to refund (%(left)s)."))
            % {
                "amount": currencies.format_price(amount, purchase.currency),
                "left": currencies.format_price(left, purchase.currency),
            }
        )


def refund(
    purchase: Purchase, *, user: Any, amount: int, reason: str, note: str, key: str
) -> Refunded:
    """Refund ``amount`` (minor units) of ``purchase`` through Stripe, for Stripe's ``reason``,
    once per confirmation ``key``; log it with the editor's ``note``; move the purchase.

    Raises ``desk.NotApplicable`` (the refund does not apply, nothing sent to Stripe),
    ``stripe_api.StripeUnavailable`` (nothing known: send the same ``key`` again) or
    ``stripe_api.StripeRefused`` (Stripe said no). Must not be called inside a transaction: it
    calls Stripe before it takes the purchase's row lock.
    """
    if not KEY.fullmatch(key):
        raise ValueError("a refund needs its confirmation's key (32 hexadecimal digits)")
    earlier = repeated(purchase, key)
    if earlier is not None:
        return earlier
    check(purchase, amount)
    made = stripe_api.create_refund(
        purchase.stripe_payment_intent_id,
        amount=amount,
        reason=reason,
        idempotency_key=_idempotency_key(purchase, key),
        metadata={
            metadata.PURCHASE: str(purchase.public_id),
            metadata.INSTALLATION: app_settings.installation_id,
        },
    )
    result = Refunded(
        str(made.id),
        int(getattr(made, "amount", amount) or amount),
        str(getattr(made, "currency", "") or purchase.currency).upper(),
        str(getattr(made, "status", "") or ""),
    )
    if not _record(purchase, result, user=user, reason=reason, note=note, key=key):
        return replace(result, repeated=True)
    return replace(result, outcome=_apply(purchase))


def _record(
    purchase: Purchase, result: Refunded, *, user: Any, reason: str, note: str, key: str
) -> bool:
    """The refund's log entry, once per Stripe refund (two requests with one key get one
    refund from Stripe); returns whether this call wrote it."""
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        if logged_refund(locked, refund_id=result.refund_id) is not None:
            return False
        log_action(
            locked,
            desk.REFUND,
            user=user,
            title=desk.log_title(locked),
            data={
                "refund": result.refund_id,
                "amount": result.amount,
                "currency": result.currency,
                "stripe_reason": reason,
                "stripe_status": result.stripe_status,
                "reason": note,
                "key": key,
            },
        )
    return True


def _apply(purchase: Purchase) -> str:
    """Stripe's answer applied now, through the webhook's own function; "" when Stripe cannot
    be asked (the ``charge.refunded`` webhook or reconciliation applies it later)."""
    session_id = purchase.stripe_checkout_session_id
    if not session_id:
        return ""
    try:
        result = fulfillment.fulfill_checkout(session_id)
    except stripe_api.StripeProblem:
        return ""
    if result.purchase is not None:
        purchase.refresh_from_db()
    return result.outcome


class RefundFormatter(LogFormatter):
    """How Site history and the timeline show a refund (registered by ``wagtail_hooks``)."""

    label = _("Shop desk: refund through Stripe")

    def format_message(self, log_entry: Any) -> str:
        data = log_entry.data or {}
        try:
            money = currencies.format_price(int(data["amount"]), str(data["currency"]))
        except (KeyError, TypeError, ValueError):
            return str(self.label)
        code = str(data.get("stripe_reason") or "")
        why = dict(REASONS).get(code, code)
        return str(_("Refunded %(money)s through Stripe (%(why)s), refund %(refund)s")) % {
            "money": money,
            "why": str(why).split(" (", 1)[0].lower(),
            "refund": data.get("refund", "?"),
        }

    def format_comment(self, log_entry: Any) -> str:
        return str((log_entry.data or {}).get("reason", ""))
