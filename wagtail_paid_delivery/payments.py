"""What Stripe told us about a purchase's payment: the events about it and what was charged.

Read by the shop desk's timeline and inspect view, and by the new sale notice, so the amount a
buyer paid is worked out in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _

from . import currencies, metadata
from .models import Purchase, StripeEvent

#: Checkout Session payment statuses that mean the money is in (or none was due).
PAID_STATUSES = frozenset({"paid", "no_payment_required"})
#: Events whose object is the paid Checkout Session (its ``amount_total`` is what was charged).
PAID_SESSION_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
#: Stripe events that never named the purchase (failed before it was found) are matched by
#: their payload among those received from this long before the purchase was created.
EVENT_MATCH_MARGIN = timedelta(hours=1)


def stripe_events(purchase: Purchase) -> QuerySet[StripeEvent]:
    """The Stripe events about ``purchase``: those processed for it, and those whose payload
    names its session, PaymentIntent or public id (an event that failed before the purchase
    was found is not linked to it)."""
    names = Q(**{f"payload__data__object__metadata__{metadata.PURCHASE}": str(purchase.public_id)})
    for value in (purchase.stripe_checkout_session_id, purchase.stripe_payment_intent_id):
        if value:
            names |= Q(payload__data__object__id=value)
            names |= Q(payload__data__object__payment_intent=value)
    since = purchase.created_at - EVENT_MATCH_MARGIN
    return StripeEvent.objects.filter(Q(purchase=purchase) | (names & Q(received_at__gte=since)))


@dataclass(frozen=True)
class AmountPaid:
    amount: int
    currency: str
    #: Why it differs from the product's price (a promotion code), or "".
    note: str = ""

    @property
    def display(self) -> str:
        return currencies.format_price(self.amount, self.currency)


def amount_paid(purchase: Purchase) -> AmountPaid:
    """What the buyer was charged, in their currency: the paid session's ``amount_total`` as
    Stripe sent it (recorded for the receipt, or in a stored event), else the price recorded on
    the purchase (grants, or no event kept)."""
    if purchase.amount_total is not None:
        return _charged(
            purchase, purchase.amount_total, purchase.paid_currency or purchase.currency
        )
    events = stripe_events(purchase).filter(type__in=PAID_SESSION_EVENTS).order_by("-received_at")
    for payload in events.values_list("payload", flat=True)[:5]:
        session = payload.get("data", {}).get("object", {}) if isinstance(payload, dict) else {}
        total, currency = session.get("amount_total"), session.get("currency")
        if session.get("payment_status") in PAID_STATUSES and isinstance(total, int):
            if not isinstance(currency, str) or not currency:
                break
            return _charged(purchase, total, currency)
    return AmountPaid(purchase.amount, purchase.currency.upper())


def _charged(purchase: Purchase, total: int, currency: str) -> AmountPaid:
    note = ""
    if total != purchase.amount or currency.upper() != purchase.currency.upper():
        note = str(_("the product's price was %(price)s")) % {"price": purchase.price_display}
    return AmountPaid(total, currency.upper(), note)
