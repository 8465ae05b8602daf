"""What the emulator remembers: Prices an editor may reference, and Checkout Sessions."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

#: Promotion codes the hosted page accepts when the session allows them (percent off).
PROMOTION_CODES = {"SANDBOX20": 20}
#: The tax the emulator adds when the session asks for ``automatic_tax`` (percent, on the
#: discounted amount, added to the price as Stripe Tax does for US sales).
TAX_PERCENT = 10


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _session_id() -> str:
    return f"cs_test_{secrets.token_hex(24)}"


def _price_id() -> str:
    return new_id("price")


class EmulatedPrice(models.Model):
    """A one-time Price, as if created in the Stripe dashboard (add them in the Django admin)."""

    id = models.CharField(primary_key=True, max_length=64, default=_price_id)
    product_name = models.CharField(max_length=255, default="Product")
    #: None for a Price whose amount the buyer chooses (``custom_unit_amount``).
    unit_amount = models.PositiveIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="usd")
    active = models.BooleanField(default=True)
    created = models.DateTimeField(default=timezone.now)
    #: ``custom_unit_amount`` (pay what you want): the least, the most (None: Stripe's cap) and
    #: the amount the hosted page suggests.
    custom_minimum = models.PositiveIntegerField(null=True, blank=True)
    custom_maximum = models.PositiveIntegerField(null=True, blank=True)
    custom_preset = models.PositiveIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    #: ``POST /v1/prices``'s ``Idempotency-Key``: a repeated request answers the same Price.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)

    def __str__(self) -> str:
        amount = self.unit_amount if self.custom_minimum is None else f"≥{self.custom_minimum}"
        return f"{self.id} ({amount} {self.currency})"

    def as_stripe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "price",
            "active": self.active,
            "billing_scheme": "per_unit",
            "created": int(self.created.timestamp()),
            "currency": self.currency.lower(),
            "custom_unit_amount": self.custom_unit_amount(),
            "livemode": False,
            "lookup_key": None,
            "metadata": dict(self.metadata or {}),
            "nickname": None,
            "product": f"prod_{self.id.removeprefix('price_')}",
            "recurring": None,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": self.unit_amount,
            "unit_amount_decimal": None if self.unit_amount is None else str(self.unit_amount),
        }

    def custom_unit_amount(self) -> dict[str, Any] | None:
        if self.custom_minimum is None:
            return None
        return {
            "maximum": self.custom_maximum,
            "minimum": self.custom_minimum,
            "preset": self.custom_preset,
        }


class EmulatedSession(models.Model):
    """A Checkout Session in ``payment`` mode with one line item."""

    id = models.CharField(primary_key=True, max_length=80, default=_session_id)
    created = models.DateTimeField(default=timezone.now)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    #: The request body the idempotency key was first used with (Stripe refuses other bodies).
    request_fingerprint = models.TextField(blank=True)
    #: The decoded request parameters, kept for the page and for debugging.
    params = models.JSONField(default=dict)

    status = models.CharField(max_length=16, default="open")  # open, complete, expired
    payment_status = models.CharField(max_length=24, default="unpaid")
    product_name = models.CharField(max_length=255)
    unit_amount = models.PositiveIntegerField()
    quantity = models.PositiveIntegerField(default=1)
    currency = models.CharField(max_length=3)
    price_id = models.CharField(max_length=64)
    #: The Price's ``custom_unit_amount`` minimum and maximum: the buyer types the amount on
    #: the hosted page (``unit_amount`` starts at the preset). None: a fixed price.
    custom_minimum = models.PositiveIntegerField(null=True, blank=True)
    custom_maximum = models.PositiveIntegerField(null=True, blank=True)
    success_url = models.TextField()
    cancel_url = models.TextField(blank=True)
    client_reference_id = models.CharField(max_length=255, blank=True)
    customer_email = models.EmailField(blank=True)
    metadata = models.JSONField(default=dict)
    payment_intent_metadata = models.JSONField(default=dict)

    email = models.EmailField(blank=True)
    #: What the buyer's promotion code took off and the tax added, set when they pay.
    promotion_code = models.CharField(max_length=32, blank=True)
    amount_discount = models.PositiveIntegerField(default=0)
    amount_tax = models.PositiveIntegerField(default=0)
    payment_intent_id = models.CharField(max_length=64, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    #: The PaymentIntent: "" (none yet), requires_payment_method (declined or the bank debit
    #: failed), processing (a bank debit clearing) or succeeded.
    payment_intent_status = models.CharField(max_length=32, blank=True)
    payment_error = models.CharField(max_length=255, blank=True)
    #: The charge, once money moved; its refunds (newest first), and its one dispute.
    charge_id = models.CharField(max_length=64, blank=True)
    charge_created = models.DateTimeField(null=True, blank=True)
    amount_refunded = models.PositiveIntegerField(default=0)
    refunds = models.JSONField(default=list, blank=True)
    #: ``POST /v1/refunds`` idempotency keys: key → [the request body, the refund id].
    refund_requests = models.JSONField(default=dict, blank=True)
    dispute_id = models.CharField(max_length=64, blank=True)
    dispute_status = models.CharField(max_length=32, blank=True)
    dispute_created = models.DateTimeField(null=True, blank=True)

    #: The last webhook delivery: "delivered (200)", "failed: …".
    webhook_result = models.CharField(max_length=255, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def amount_subtotal(self) -> int:
        return self.unit_amount * self.quantity

    @property
    def amount_total(self) -> int:
        return self.amount_subtotal - self.amount_discount + self.amount_tax

    @property
    def allows_promotion_codes(self) -> bool:
        return str(self.params.get("allow_promotion_codes")).lower() == "true"

    @property
    def automatic_tax(self) -> bool:
        tax = self.params.get("automatic_tax")
        return isinstance(tax, dict) and str(tax.get("enabled")).lower() == "true"

    def apply_totals(self, promotion_code: str = "") -> None:
        """The discount of ``promotion_code`` (ValueError when unknown or not allowed) and the
        tax, as Checkout works them out when the buyer pays."""
        code = promotion_code.strip().upper()
        percent = 0
        if code:
            if not self.allows_promotion_codes or code not in PROMOTION_CODES:
                raise ValueError(f"the promotion code {promotion_code!r} is not valid")
            percent = PROMOTION_CODES[code]
        self.promotion_code = code
        self.amount_discount = self.amount_subtotal * percent // 100
        taxed = self.amount_subtotal - self.amount_discount
        self.amount_tax = taxed * TAX_PERCENT // 100 if self.automatic_tax else 0

    def choose_amount(self, amount: int) -> None:
        """The buyer's amount for a custom Price (ValueError outside its minimum and maximum)."""
        if self.custom_minimum is None:
            raise ValueError("this price has a fixed amount")
        if amount < self.custom_minimum:
            raise ValueError("enter an amount no lower than the minimum shown")
        if self.custom_maximum is not None and amount > self.custom_maximum:
            raise ValueError("enter an amount no higher than the maximum")
        self.unit_amount = amount

    def price_object(self) -> dict[str, Any]:
        price = EmulatedPrice.objects.filter(pk=self.price_id).first()
        if price is not None:
            return price.as_stripe()
        return EmulatedPrice(
            id=self.price_id,
            product_name=self.product_name,
            unit_amount=self.unit_amount,
            currency=self.currency,
            created=self.created,
        ).as_stripe()

    def line_items(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": f"li_{self.id.removeprefix('cs_test_')[:24]}",
                    "object": "item",
                    "adjustable_quantity": None,
                    "amount_discount": self.amount_discount,
                    "amount_subtotal": self.amount_subtotal,
                    "amount_tax": self.amount_tax,
                    "amount_total": self.amount_total,
                    "currency": self.currency,
                    "description": self.product_name,
                    "metadata": {},
                    "price": self.price_object(),
                    "quantity": self.quantity,
                }
            ],
            "has_more": False,
            "url": f"/v1/checkout/sessions/{self.id}/line_items",
        }

    @property
    def pi_status(self) -> str:
        """The PaymentIntent's status (sessions paid before these fields existed: succeeded)."""
        if self.payment_intent_status:
            return self.payment_intent_status
        if not self.payment_intent_id:
            return ""
        return "succeeded" if self.payment_status == "paid" else "processing"

    @property
    def latest_charge_id(self) -> str:
        if self.charge_id:
            return self.charge_id
        if self.pi_status == "succeeded":
            return f"ch_{self.payment_intent_id.removeprefix('pi_')}"
        return ""

    @property
    def refunded(self) -> bool:
        return bool(self.latest_charge_id) and self.amount_refunded >= self.amount_total

    @property
    def dispute_open(self) -> bool:
        return bool(self.dispute_id) and self.dispute_status not in ("won", "lost")

    def payment_intent(self, *, expand_charge: bool = False) -> dict[str, Any] | None:
        if not self.payment_intent_id:
            return None
        status = self.pi_status
        charge_id = self.latest_charge_id
        return {
            "id": self.payment_intent_id,
            "object": "payment_intent",
            "amount": self.amount_total,
            "amount_capturable": 0,
            "amount_received": self.amount_total if status == "succeeded" else 0,
            "capture_method": "automatic",
            "created": int((self.completed_at or self.created).timestamp()),
            "currency": self.currency,
            "customer": None,
            "description": None,
            "last_payment_error": (
                {"type": "card_error", "message": self.payment_error}
                if self.payment_error and status == "requires_payment_method"
                else None
            ),
            "latest_charge": (self.charge() if expand_charge else charge_id) if charge_id else None,
            "livemode": False,
            "metadata": dict(self.payment_intent_metadata),
            "payment_method_types": ["card"],
            "receipt_email": None,
            "status": status,
        }

    def charge(self) -> dict[str, Any] | None:
        """The latest charge, shaped like Stripe's (refunds and the disputed flag included)."""
        charge_id = self.latest_charge_id
        if not charge_id:
            return None
        created = self.charge_created or self.completed_at or self.created
        return {
            "id": charge_id,
            "object": "charge",
            "amount": self.amount_total,
            "amount_captured": self.amount_total,
            "amount_refunded": self.amount_refunded,
            "billing_details": {"email": self.email or None, "name": None},
            "captured": True,
            "created": int(created.timestamp()),
            "currency": self.currency,
            "disputed": bool(self.dispute_id),
            "livemode": False,
            # A charge copies its PaymentIntent's metadata when it is created.
            "metadata": dict(self.payment_intent_metadata),
            "paid": True,
            "payment_intent": self.payment_intent_id,
            "receipt_email": self.email or None,
            "receipt_url": self.receipt_url(),
            "refunded": self.refunded,
            "refunds": {
                "object": "list",
                "data": list(self.refunds),
                "has_more": False,
                "url": f"/v1/charges/{charge_id}/refunds",
            },
            "status": "succeeded",
        }

    def receipt_url(self) -> str:
        """The charge's receipt page (Stripe's is on pay.stripe.com), on the sandbox's address."""
        base = getattr(settings, "SANDBOX_URL", "") or "http://testserver"
        return base.rstrip("/") + reverse("stripe_emulator:receipt", args=[self.latest_charge_id])

    def dispute(self) -> dict[str, Any] | None:
        if not self.dispute_id:
            return None
        return {
            "id": self.dispute_id,
            "object": "dispute",
            "amount": self.amount_total,
            "balance_transactions": [],
            "charge": self.latest_charge_id,
            "created": int((self.dispute_created or timezone.now()).timestamp()),
            "currency": self.currency,
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": self.payment_intent_id,
            "reason": "fraudulent",
            "status": self.dispute_status,
        }

    @property
    def state_label(self) -> str:
        """What a shop owner would call this session's state, for the dashboard."""
        if self.status == "open":
            return "declined, still open" if self.payment_error else "open"
        if self.status == "expired":
            return "expired"
        if self.payment_status != "paid":
            return "payment failed" if self.pi_status == "requires_payment_method" else "processing"
        if self.dispute_status == "lost":
            return "dispute lost"
        if self.dispute_open:
            return "disputed"
        if self.refunded:
            return "refunded"
        if self.amount_refunded:
            return "partially refunded"
        return "paid (dispute won)" if self.dispute_status == "won" else "paid"

    def as_stripe(self, *, url: str = "", expand: tuple[str, ...] = ()) -> dict[str, Any]:
        """The session as Stripe's API returns it; ``expand`` as in ``?expand[]=``."""
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "checkout.session",
            "amount_subtotal": self.amount_subtotal,
            "amount_total": self.amount_total,
            "cancel_url": self.cancel_url or None,
            "client_reference_id": self.client_reference_id or None,
            "created": int(self.created.timestamp()),
            "currency": self.currency,
            "customer": None,
            "customer_details": (
                {
                    "address": None,
                    "email": self.email,
                    "name": None,
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                }
                if self.email
                else None
            ),
            "customer_email": self.customer_email or None,
            "expires_at": int(self.created.timestamp()) + 24 * 3600,
            "livemode": False,
            "metadata": dict(self.metadata),
            "mode": "payment",
            "payment_intent": self.payment_intent_id or None,
            "payment_method_types": ["card"],
            "payment_status": self.payment_status,
            "status": self.status,
            "success_url": self.success_url,
            "total_details": {
                "amount_discount": self.amount_discount,
                "amount_shipping": 0,
                "amount_tax": self.amount_tax,
            },
            "url": url if self.status == "open" else None,
        }
        if "line_items" in expand:
            obj["line_items"] = self.line_items()
        # "payment_intent.latest_charge" expands the PaymentIntent too, as on Stripe.
        if "payment_intent" in expand or "payment_intent.latest_charge" in expand:
            obj["payment_intent"] = self.payment_intent(
                expand_charge="payment_intent.latest_charge" in expand
            )
        return obj


class EmulatedEvent(models.Model):
    """An event the emulator made, as Stripe keeps it (listed at ``GET /v1/events``), and what
    became of its webhook."""

    id = models.CharField(primary_key=True, max_length=64)
    type = models.CharField(max_length=100, db_index=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    session = models.ForeignKey(
        EmulatedSession, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    #: The whole event, exactly as its webhook carries it (and the list returns it).
    payload = models.JSONField()
    #: "sending", "delivered (200)", "failed: …", "held back (webhooks off)", "not sent: …".
    delivery = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class EmulatorSwitches(models.Model):
    """The dashboard's switches; one row (pk 1)."""

    #: Webhooks are held back, as if the shop's endpoint were down or misconfigured: events are
    #: still made (and listed), never delivered.
    webhooks_held = models.BooleanField(default=False)

    def __str__(self) -> str:
        return "webhooks held back" if self.webhooks_held else "webhooks sent"

    @classmethod
    def current(cls) -> EmulatorSwitches:
        return cls.objects.get_or_create(pk=1)[0]
