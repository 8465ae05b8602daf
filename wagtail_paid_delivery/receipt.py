"""The buyer's receipt: what was bought, what it cost, when, and the order number to quote.

Recorded once, at fulfillment (``record_payment``, from the Checkout Session and its charge that
``fulfillment`` reads anyway), so the success page, the download page and the delivery email
(``receipt_for``) never ask Stripe. The amounts are Stripe's: the session's subtotal, its
``total_details`` (discount, tax) and total, in the currency it charged. A complimentary copy
says so and shows no amount; a purchase paid before receipts were recorded shows its price.
See docs/architecture.md, "Receipts".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from . import currencies
from .models import Purchase

#: The schemes a receipt link may have (it is rendered as a link on the buyer's pages).
RECEIPT_URL_SCHEMES = ("https://", "http://")


@dataclass(frozen=True)
class ReceiptLine:
    #: "subtotal", "discount", "tax", "tax_included", "total" or "price" (a CSS hook too).
    kind: str
    label: Any
    amount: str


@dataclass(frozen=True)
class Receipt:
    order_number: str
    product_title: str
    #: When it was paid (or granted); the purchase's creation while neither happened.
    date: datetime
    complimentary: bool
    lines: list[ReceiptLine]
    #: The product's file titles; empty where the page lists the files itself.
    files: list[str] = field(default_factory=list)
    receipt_url: str = ""
    #: The bundle this product came in (an included purchase): its title. The order number and
    #: amounts are then the bundle's business; the receipt shows the bundle's order number.
    bundle_title: str = ""


def record_payment(purchase: Purchase, session: Any, receipt_url: str = "") -> set[str]:
    """Copy what ``session`` (a paid Checkout Session) charged onto ``purchase``, once.

    Returns the fields set, for the caller's ``save(update_fields=…)``. Amounts recorded earlier
    are kept (a later re-read may follow a refund; the receipt is what was charged); a receipt
    URL is added when Stripe has one and the purchase has none yet.
    """
    fields: set[str] = set()
    total = getattr(session, "amount_total", None)
    if purchase.amount_total is None and isinstance(total, int):
        details = getattr(session, "total_details", None)
        subtotal = getattr(session, "amount_subtotal", None)
        purchase.amount_total = total
        purchase.amount_subtotal = subtotal if isinstance(subtotal, int) else total
        purchase.amount_discount = int(getattr(details, "amount_discount", 0) or 0)
        purchase.amount_tax = int(getattr(details, "amount_tax", 0) or 0)
        currency = str(getattr(session, "currency", "") or purchase.currency)
        purchase.paid_currency = currency.upper()[:3]
        fields |= {"amount_total", "amount_subtotal", "amount_discount", "amount_tax"}
        fields.add("paid_currency")
    url = str(receipt_url or "")
    if url.startswith(RECEIPT_URL_SCHEMES) and len(url) <= 500 and not purchase.receipt_url:
        purchase.receipt_url = url
        fields.add("receipt_url")
    return fields


def amount_lines(purchase: Purchase) -> list[ReceiptLine]:
    """The amounts a receipt lists: the breakdown only when Checkout applied a discount or tax."""
    if purchase.amount_total is None:
        price = currencies.format_price(purchase.amount, purchase.currency)
        return [ReceiptLine("price", _("Price"), price)]
    currency = purchase.paid_currency or purchase.currency

    def money(amount: int) -> str:
        return currencies.format_price(amount, currency)

    subtotal = purchase.amount_subtotal if purchase.amount_subtotal is not None else 0
    discount, tax, total = purchase.amount_discount, purchase.amount_tax, purchase.amount_total
    lines = []
    if discount or tax:
        lines.append(ReceiptLine("subtotal", _("Subtotal"), money(subtotal)))
    if discount:
        lines.append(ReceiptLine("discount", _("Discount"), f"\u2212{money(discount)}"))
    if tax and subtotal - discount == total:
        # Tax included in the price (Stripe's inclusive tax): it adds nothing to the total.
        lines.append(ReceiptLine("tax_included", _("Tax included"), money(tax)))
    elif tax:
        lines.append(ReceiptLine("tax", _("Tax"), money(tax)))
    lines.append(ReceiptLine("total", _("Total paid"), money(total)))
    return lines


def receipt_for(purchase: Purchase, *, files: list[Any] | None = None) -> Receipt:
    """The receipt of ``purchase``. ``files``: the product's files to list (None: look them up
    on the product page, one query; [] to list none)."""
    if files is None:
        product = purchase.product_page
        files = product.product_files if product is not None else []
    complimentary = purchase.source == Purchase.Source.GRANT
    bundle = purchase.bundle if purchase.bundle_id is not None else None
    if bundle is not None:
        # What the buyer paid for is the bundle: its order number, no amount of its own.
        return Receipt(
            order_number=bundle.order_number,
            product_title=purchase.product_title,
            date=timezone.localtime(purchase.paid_at or purchase.created_at),
            complimentary=False,
            lines=[],
            files=[str(getattr(f, "title", f)) for f in files],
            bundle_title=bundle.product_title,
        )
    return Receipt(
        order_number=purchase.order_number,
        product_title=purchase.product_title,
        date=timezone.localtime(purchase.paid_at or purchase.created_at),
        complimentary=complimentary,
        lines=[] if complimentary else amount_lines(purchase),
        files=[str(getattr(f, "title", f)) for f in files],
        receipt_url=purchase.receipt_url,
    )
