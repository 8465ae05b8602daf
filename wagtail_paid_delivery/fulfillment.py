"""The purchase state machine: the only code that moves a Purchase between states.

Every move goes through one table, ``TRANSITIONS``: (the purchase's state, what happened) →
(its new state, the outcome, the effects). What happened is either what Stripe says about the
money now (``payment_state``: paid, failed, refunded, disputed…) or a decision of the shop (an
editor's revoke or restore, a checkout that could not start). A new state or rule is one row.

``fulfill_checkout`` is the one door to a paid Purchase. The webhook task, the success page and
reconciliation all call it, in any order and any number of times, and the buyer is fulfilled
once: Stripe is asked first (outside any transaction), then the Purchase row is locked and moved
by the table. Signals (``purchase_paid``, ``purchase_revoked``, ``purchase_restored``) are sent on
commit, so a receiver never sees a change that was rolled back. See docs/architecture.md,
"Purchase states".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from django.db import transaction
from django.utils import timezone

from . import licenses, metadata, outbox, receipt, signals, stripe_api
from .conf import app_settings
from .models import DownloadLink, Purchase
from .payments import PAID_STATUSES

logger = logging.getLogger(__name__)

Outcome = Literal[
    "fulfilled",  # now paid (purchase_paid sent)
    "already_paid",  # was paid, still is
    "not_paid",  # Stripe has no money yet (asynchronous payment clearing, session open)
    "refused",  # this purchase may not move as asked (see reason)
    "not_ours",  # not this installation's session, or no matching purchase
    "failed",  # the payment failed, or checkout could not start: purchase marked failed
    "expired",  # the session expired unpaid: purchase marked expired
    "refunded",  # refunded in full (or by policy, in part) or a dispute lost: final
    "disputed",  # an open dispute: access suspended (DISPUTE_POLICY "suspend")
    "restored",  # a dispute was won (or an editor restored access): access given back
    "partially_refunded",  # a partial refund recorded; access kept (PARTIAL_REFUND_POLICY)
    "revoked",  # an editor took access away: final
    "unchanged",  # a shop decision that did not apply to the purchase's state
]

#: What Stripe says about the money (``PaymentState.state``), and what the shop decides.
StripeState = Literal["paid", "won", "pending", "failed", "expired", "refunded", "disputed"]
ShopDecision = Literal["revoke", "refund", "suspend", "restore", "checkout_failed", "grant"]

#: Dispute statuses after which the seller keeps the money (an inquiry closed counts too).
DISPUTE_WON = frozenset({"won", "warning_closed"})
DISPUTE_LOST = frozenset({"lost"})
#: PaymentIntent statuses that, on a completed but unpaid session, mean the payment failed.
PAYMENT_FAILED = frozenset({"requires_payment_method", "canceled"})

# Effects of a transition, run in the purchase's transaction.
DELIVER = "deliver"  # paid_at now; delivery email and sale notices promised; purchase_paid
REVOKE_LINKS = "revoke_links"  # every live link of the purchase ends for good
NOTIFY_REVOKED = "notify_revoked"  # purchase_revoked on commit
NOTIFY_RESTORED = "notify_restored"  # purchase_restored on commit
NOTIFY_FAILED = "notify_failed"  # the failed payment notice promised (sent on commit)

#: A purchase disputed before it was ever paid: access held, not suspended (nothing to give
#: back). Only a table key; its status is ``disputed``.
HELD = "held"

S = Purchase.Status


@dataclass(frozen=True)
class Transition:
    #: The new state; None: the purchase stays as it is.
    to: S | None
    outcome: Outcome
    effects: tuple[str, ...] = ()
    #: Why, for the log and the events list; formatted with ``reason`` (Stripe's or the
    #: editor's), ``status`` and ``status_reason`` (the purchase's own).
    why: str = "{reason}"


#: (the purchase's state or HELD, what happened) → the transition.
Rows = dict[tuple[str, str], Transition]
_FINAL = "purchase is {status}; a payment does not bring it back"


def _payment_rows() -> Rows:
    """A payment: delivered once, from any state that has not had its access yet."""
    deliver = Transition(S.PAID, "fulfilled", (DELIVER,), "")
    rows: Rows = {
        (source, said): deliver for source in (S.PENDING, S.EXPIRED) for said in ("paid", "won")
    }
    rows[HELD, "won"] = deliver
    # An editor's complimentary copy (``grant_purchase``): a new purchase, paid without Stripe.
    rows[S.PENDING, "grant"] = deliver
    rows[S.PAID, "paid"] = rows[S.PAID, "won"] = Transition(None, "already_paid", why="")
    rows[S.DISPUTED, "won"] = Transition(S.PAID, "restored", (NOTIFY_RESTORED,), "dispute won")
    rows[S.DISPUTED, "paid"] = rows[HELD, "paid"] = Transition(None, "refused", why=_FINAL)
    for said in ("paid", "won", "disputed"):
        rows[S.FAILED, said] = Transition(None, "refused", why="{status_reason}")
    return rows


def _unpaid_rows() -> Rows:
    """Unpaid ends: only a pending purchase expires or fails."""
    not_paid = Transition(None, "not_paid", why="{reason} (purchase {status})")
    rows: Rows = {
        (source, said): not_paid
        for source in (S.PAID, S.FAILED, S.EXPIRED, S.DISPUTED, HELD)
        for said in ("failed", "expired")
    }
    # Stripe says "failed" only for a completed session whose payment then failed (a bank
    # debit returned): the buyer was told to wait for an email, so they get one.
    rows[S.PENDING, "failed"] = Transition(S.FAILED, "failed", (NOTIFY_FAILED,))
    rows[S.PENDING, "expired"] = Transition(S.EXPIRED, "expired")
    rows[S.PENDING, "checkout_failed"] = Transition(S.FAILED, "failed")
    return rows


def _access_rows() -> Rows:
    """Refunds (final; buyers who had access are told), disputes (a paid purchase is suspended:
    links pause, they are checked at every use) and the shop's own revoke and restore."""
    rows: Rows = {}
    for source in (S.PENDING, S.EXPIRED, S.FAILED, HELD):
        rows[source, "refunded"] = Transition(S.REFUNDED, "refunded", (REVOKE_LINKS,))
    for source in (S.PAID, S.DISPUTED):
        rows[source, "refunded"] = Transition(
            S.REFUNDED, "refunded", (REVOKE_LINKS, NOTIFY_REVOKED)
        )
    for source in (S.PENDING, S.EXPIRED, S.FAILED, HELD, S.PAID, S.DISPUTED):
        rows[source, "refund"] = rows[source, "refunded"]
        rows[source, "revoke"] = Transition(S.REVOKED, "revoked", (REVOKE_LINKS, NOTIFY_REVOKED))
    rows[S.PAID, "disputed"] = rows[S.PAID, "suspend"] = Transition(
        S.DISPUTED, "disputed", (NOTIFY_REVOKED,)
    )
    for source in (S.PENDING, S.EXPIRED):
        rows[source, "disputed"] = Transition(S.DISPUTED, "disputed")  # held until won
    rows[S.DISPUTED, "disputed"] = rows[HELD, "disputed"] = Transition(None, "disputed")
    rows[S.DISPUTED, "restore"] = Transition(S.PAID, "restored", (NOTIFY_RESTORED,), "")
    return rows


def _final_rows() -> Rows:
    """Refunded and revoked are final: nothing Stripe says moves them."""
    revoked = Transition(None, "refused", why="revoked by an editor; no webhook undoes it")
    rows: Rows = {}
    for said in ("paid", "won", "failed", "expired", "refunded", "disputed"):
        rows[S.REFUNDED, said] = Transition(None, "refused", why=_FINAL)
        rows[S.REVOKED, said] = revoked
    return rows


#: (state, what happened) → what to do. Pairs not listed leave the purchase as it is.
TRANSITIONS: Rows = {
    **_payment_rows(),
    **_unpaid_rows(),
    **_access_rows(),
    **_final_rows(),
}
UNCHANGED = Transition(None, "unchanged", why="")

#: The timestamp field each state sets when a purchase enters it (paid_at: by DELIVER only, so
#: a restored purchase keeps the time it was first paid).
TIMESTAMPS = {
    S.FAILED: "failed_at",
    S.EXPIRED: "expired_at",
    S.REFUNDED: "refunded_at",
    S.DISPUTED: "disputed_at",
    S.REVOKED: "revoked_at",
}


@dataclass(frozen=True)
class FulfillmentResult:
    """What a transition did. ``purchase`` is None only when the session is not ours."""

    purchase: Purchase | None
    outcome: Outcome
    #: Why the outcome is not ``fulfilled``, for logs and the events list.
    reason: str = ""

    @property
    def is_paid(self) -> bool:
        return self.outcome in ("fulfilled", "already_paid", "restored", "partially_refunded")

    @property
    def changed(self) -> bool:
        return self.outcome not in ("already_paid", "not_paid", "refused", "unchanged")


@dataclass(frozen=True)
class PaymentState:
    """What Stripe says about the money behind a Checkout Session, re-read every time."""

    state: StripeState
    reason: str = ""
    #: The charge's refunded amount (minor units), when Stripe reported one.
    amount_refunded: int = 0
    payment_intent_id: str = ""
    #: Stripe's receipt for the charge, when it has one (recorded on the purchase).
    receipt_url: str = ""


def table_key(purchase: Purchase) -> str:
    if purchase.status == S.DISPUTED and purchase.paid_at is None:
        return HELD
    return str(purchase.status)


def apply(
    locked: Purchase, said: str, reason: str, fields: set[str], *, problems: list[str] | None = None
) -> FulfillmentResult:
    """Move ``locked`` (a row-locked Purchase) by the table; records changed fields in
    ``fields`` for the caller's save. ``problems``: how Stripe's line items differ from what
    was sold; a delivery with problems is refused and the purchase marked failed."""
    transition = TRANSITIONS.get((table_key(locked), said), UNCHANGED)
    if DELIVER in transition.effects and problems:
        # Stripe charged for something other than what we sold: never deliver it.
        reason = "Line items do not match the purchase: " + "; ".join(problems)
        logger.error("Refused purchase %s: %s", locked.public_id, reason)
        transition = Transition(S.FAILED, "refused")
    why = transition.why.format(
        reason=reason,
        status=locked.status,
        status_reason=locked.status_reason or f"purchase {locked.status}",
    )
    if transition.to is None:
        return FulfillmentResult(locked, transition.outcome, why)
    if locked.status == S.EXPIRED and transition.to == S.PAID:
        # Stripe says the money is in: it is the truth, whatever our sweep concluded.
        logger.warning("Purchase %s was expired and is now paid", locked.public_id)
    now = timezone.now()
    locked.status = transition.to
    locked.status_reason = why if transition.to != S.PAID else ""  # paid needs no explaining
    fields.update({"status", "status_reason"})
    if transition.to in TIMESTAMPS:
        setattr(locked, TIMESTAMPS[transition.to], now)
        fields.add(TIMESTAMPS[transition.to])
    _run_effects(locked, transition.effects, why, now, fields)
    if DELIVER not in transition.effects:
        _follow_bundle(locked, said, why)
    return FulfillmentResult(locked, transition.outcome, why)


def _run_effects(
    locked: Purchase, effects: tuple[str, ...], why: str, now: Any, fields: set[str]
) -> None:
    if DELIVER in effects:
        locked.paid_at = now
        fields.add("paid_at")
        # Recorded with the payment, so no lost task or failed send can lose the email.
        # The key is issued before the email is promised, in the same transaction: the email
        # (rendered later from the purchase) always finds it.
        licenses.issue(locked)
        _include_bundled(locked, now)
        outbox.promise_delivery(locked)
        outbox.promise_sale_notices(locked)
        transaction.on_commit(lambda: signals.purchase_paid.send(sender=Purchase, purchase=locked))
    if REVOKE_LINKS in effects:
        DownloadLink.objects.filter(purchase=locked, revoked_at=None).update(revoked_at=now)
    if NOTIFY_REVOKED in effects:
        transaction.on_commit(
            lambda: signals.purchase_revoked.send(sender=Purchase, purchase=locked, reason=why)
        )
    if NOTIFY_FAILED in effects:
        outbox.promise_payment_failed(locked)
    if NOTIFY_RESTORED in effects:
        transaction.on_commit(
            lambda: signals.purchase_restored.send(sender=Purchase, purchase=locked)
        )


# Bundles --------------------------------------------------------------------------------------


def _include_bundled(bundle: Purchase, now: Any) -> None:
    """A paid bundle grants each product it includes now: one included purchase per product
    (``Source.BUNDLE``, amount 0, never a sale), paid in the bundle's transaction, with its own
    license key when that product issues them. Links, the library, file versions and update
    emails then treat it as any paid purchase of that product. The bundle's delivery email
    carries their links (``outbox``): an included purchase promises no email of its own.
    Included purchases include nothing (bundles do not nest)."""
    page = bundle.product_page if bundle.source != Purchase.Source.BUNDLE else None
    for product in page.included_products if page is not None else []:
        child, created = Purchase.objects.get_or_create(
            bundle=bundle,
            product=product,
            defaults={
                "product_title": product.title,
                "amount": 0,
                "currency": bundle.currency,
                "email": bundle.email,
                "user": bundle.user,
                "language": bundle.language,
                "livemode": bundle.livemode,
                "source": Purchase.Source.BUNDLE,
                "status": S.PAID,
                "paid_at": now,
            },
        )
        if created:
            licenses.issue(child)
            transaction.on_commit(
                partial(signals.purchase_paid.send, sender=Purchase, purchase=child)
            )


def _follow_bundle(bundle: Purchase, said: str, reason: str) -> None:
    """What happened to a bundle purchase happens to its included purchases, by the same table:
    a refund, a revoke, a dispute take them all back, a won dispute or a restore gives them back.
    Those an editor revoked on their own stay revoked (final). Locked after the bundle, in id
    order, so two moves of one bundle never deadlock."""
    if bundle.source == Purchase.Source.BUNDLE:
        return
    for child in Purchase.objects.select_for_update().filter(bundle=bundle).order_by("pk"):
        fields = {"updated_at"}
        if apply(child, said, f"with its bundle: {reason}", fields).changed:
            child.save(update_fields=sorted(fields))


# What Stripe says ------------------------------------------------------------------------------


def payment_state(session: Any) -> PaymentState:
    """Derive our view of a session's payment from Stripe's current objects.

    Order of webhooks does not matter because nothing here reads an event: the session (with
    its PaymentIntent), the PaymentIntent's latest charge (refunded? disputed?) and, only for a
    disputed charge, its disputes. Raises ``StripeUnavailable`` or ``StripeRefused``.
    """
    payment_intent = getattr(session, "payment_intent", None)
    pi_id = str(getattr(payment_intent, "id", payment_intent) or "")
    if session.payment_status not in PAID_STATUSES:
        if session.status == "expired":
            return PaymentState("expired", "the Checkout Session expired unpaid", 0, pi_id)
        pi_status = getattr(payment_intent, "status", None)
        if session.status == "complete" and pi_status in PAYMENT_FAILED:
            error = getattr(payment_intent, "last_payment_error", None)
            message = getattr(error, "message", None) or "the payment did not go through"
            return PaymentState("failed", f"Payment failed: {message}", 0, pi_id)
        return PaymentState("pending", f"payment_status {session.payment_status}", 0, pi_id)
    if not pi_id:
        return PaymentState("paid")  # no_payment_required: nothing to refund or dispute
    return _charge_state(pi_id, payment_intent)


def _charge_state(pi_id: str, intent: Any) -> PaymentState:
    """A paid session's money now: still paid, refunded, disputed, or a dispute won.

    ``intent`` is the session's PaymentIntent; its charge comes expanded with the session
    (``stripe_api.retrieve_checkout_session``), else it is asked for.
    """
    if isinstance(intent, str) or isinstance(getattr(intent, "latest_charge", None), str):
        intent = stripe_api.retrieve_payment_intent(pi_id)
    charge = getattr(intent, "latest_charge", None)
    if charge is None or isinstance(charge, str):
        return PaymentState("paid", payment_intent_id=pi_id)
    receipt_url = str(getattr(charge, "receipt_url", None) or "")
    amount = int(getattr(charge, "amount", 0) or 0)
    refunded = int(getattr(charge, "amount_refunded", 0) or 0)
    if getattr(charge, "refunded", False) or (amount and refunded >= amount):
        return PaymentState("refunded", "Refunded in full.", refunded, pi_id)

    paid: StripeState = "paid"
    if getattr(charge, "disputed", False):
        disputes = stripe_api.list_disputes_for_payment_intent(pi_id)
        latest = disputes[0] if disputes else None
        status = str(getattr(latest, "status", "") or "")
        dispute_id = getattr(latest, "id", "")
        if status in DISPUTE_LOST:
            reason = f"Dispute {dispute_id} lost: the payment was returned to the buyer."
            return PaymentState("refunded", reason, refunded, pi_id)
        if status in DISPUTE_WON:
            paid = "won"
        elif latest is not None and app_settings.DISPUTE_POLICY != "ignore":
            reason = f"Dispute {dispute_id} is {status}: access suspended until it is won."
            return PaymentState("disputed", reason, refunded, pi_id)

    if refunded and app_settings.PARTIAL_REFUND_POLICY == "revoke":
        reason = f"Partially refunded ({refunded} of {amount}); PARTIAL_REFUND_POLICY is revoke."
        return PaymentState("refunded", reason, refunded, pi_id)
    return PaymentState(paid, "", refunded, pi_id, receipt_url)


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
    return problems + amount_problems(item, price, purchase)


def amount_problems(item: Any, price: Any, purchase: Any) -> list[str]:
    """How the line's amount differs from the purchase's, before discounts.

    A fixed price: unit amount and subtotal equal the purchase's amount. A Price with
    ``custom_unit_amount`` (pay what you want): the subtotal, what the buyer chose, is at least
    the purchase's amount (the page's minimum at checkout), and so is the Price's own minimum.
    """
    subtotal = getattr(item, "amount_subtotal", None)
    custom = getattr(price, "custom_unit_amount", None)
    if custom is None:
        problems = []
        unit_amount = getattr(price, "unit_amount", None)
        if unit_amount != purchase.amount:
            problems.append(f"unit amount {unit_amount} != {purchase.amount}")
        if subtotal != purchase.amount:
            problems.append(f"subtotal {subtotal} != {purchase.amount}")
        return problems
    minimum = getattr(custom, "minimum", None)
    if not isinstance(minimum, int) or minimum < purchase.amount:
        return [f"custom price minimum {minimum} < {purchase.amount}"]
    if not isinstance(subtotal, int) or subtotal < purchase.amount:
        return [f"subtotal {subtotal} < minimum {purchase.amount}"]
    return []


# Doors in --------------------------------------------------------------------------------------


def fulfill_checkout(session_id: str) -> FulfillmentResult:
    """Bring the Purchase behind Checkout Session ``session_id`` in line with Stripe, once.

    Raises ``stripe_api.StripeUnavailable`` when Stripe cannot be reached (nothing changed; call
    again later) and ``stripe_api.StripePermanent`` for a session Stripe does not know.
    Must not be called inside a transaction: it calls Stripe before taking its row lock.
    """
    session = stripe_api.retrieve_checkout_session(session_id)
    purchase, why_not = _session_purchase(session)
    if purchase is None:
        return FulfillmentResult(None, "not_ours", why_not)

    state = payment_state(session)
    details = getattr(session, "customer_details", None)
    email = getattr(details, "email", None) or getattr(session, "customer_email", None) or ""
    if state.state == "pending":
        # Asynchronous methods complete the session before the money arrives;
        # checkout.session.async_payment_succeeded brings us back here. The buyer's address is
        # kept already: the "processing" page tells them where the link will go.
        if email and not purchase.email and purchase.erased_at is None:
            Purchase.objects.filter(pk=purchase.pk, email="", erased_at=None).update(
                email=email, updated_at=timezone.now()
            )
            purchase.email = email
        return FulfillmentResult(purchase, "not_paid", state.reason)

    problems = line_item_problems(session, purchase) if state.state in ("paid", "won") else []
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        _reuse_product(locked, purchase)
        fields = _record_stripe_facts(locked, session, state, email)
        if state.state in ("paid", "won"):
            fields |= receipt.record_payment(locked, session, state.receipt_url)
        refund_grew = "amount_refunded" in fields
        if TRANSITIONS.get((table_key(locked), state.state), UNCHANGED).effects == (DELIVER,):
            locked.email = email or locked.email
            locked.livemode = bool(session.livemode)
            fields.update({"email", "livemode"})
            fields |= _record_chosen_amount(locked, session, problems)
        result = apply(locked, state.state, state.reason, fields, problems=problems)
        if len(fields) > 1:
            locked.save(update_fields=sorted(fields))
    if refund_grew and result.outcome == "already_paid":
        result = FulfillmentResult(locked, "partially_refunded", state.reason)
    if result.outcome == "fulfilled":
        logger.info("Purchase %s paid (session %s)", locked.public_id, session.id)
    elif result.changed:
        logger.info("Purchase %s %s: %s", locked.public_id, result.outcome, result.reason)
    return result


def _record_chosen_amount(purchase: Purchase, session: Any, problems: list[str]) -> set[str]:
    """A pay-what-you-want purchase's amount becomes what the buyer chose (the line's subtotal,
    before discounts), so sales figures and refunds count it; a fixed price, or a session with
    ``problems`` (refused), is left alone."""
    items = list(getattr(getattr(session, "line_items", None), "data", None) or [])
    price = getattr(items[0], "price", None) if len(items) == 1 and not problems else None
    if getattr(price, "custom_unit_amount", None) is None:
        return set()
    chosen = items[0].amount_subtotal
    if not isinstance(chosen, int) or chosen <= purchase.amount:
        return set()
    purchase.amount = chosen
    return {"amount"}


def _session_purchase(session: Any) -> tuple[Purchase | None, str]:
    """Our Purchase behind ``session``, or None and why it is not ours."""
    tags = metadata.as_dict(getattr(session, "metadata", None))
    if not metadata.is_ours(tags):
        return None, "not this installation's checkout session"
    public_id = metadata.purchase_id(tags)
    if public_id is None or metadata.parse_uuid(session.client_reference_id) != public_id:
        logger.warning("Checkout Session %s: purchase ids in metadata do not agree", session.id)
        return None, "purchase id missing or inconsistent"
    # With its product page: the line items are checked against it.
    with_product = Purchase.objects.select_related("product")
    purchase = with_product.filter(stripe_checkout_session_id=session.id).first()
    if purchase is None:
        purchase = with_product.filter(public_id=public_id).first()
    if purchase is None or purchase.public_id != public_id:
        logger.error("Checkout Session %s: no matching purchase %s", session.id, public_id)
        return None, "no matching purchase"
    if purchase.status == S.PAID and purchase.stripe_checkout_session_id not in (
        None,
        "",
        session.id,
    ):
        # The same purchase paid through two sessions: a refund is due, not a delivery.
        logger.error(
            "Purchase %s already paid by %s; session %s paid again",
            purchase.public_id,
            purchase.stripe_checkout_session_id,
            session.id,
        )
    return purchase, ""


def _reuse_product(locked: Purchase, purchase: Purchase) -> None:
    """Give the freshly locked row the product page ``purchase`` already loaded (the line item
    check read it), so the delivery's effects (the license key) do not read it again."""
    if locked.product_id == purchase.product_id and Purchase.product.is_cached(purchase):
        locked.product = purchase.product


def _record_stripe_facts(
    locked: Purchase, session: Any, state: PaymentState, email: str
) -> set[str]:
    """Ids, the buyer's address and the refunded amount Stripe knows and the purchase lacks."""
    fields = {"updated_at"}
    if state.payment_intent_id and not locked.stripe_payment_intent_id:
        locked.stripe_payment_intent_id = state.payment_intent_id
        fields.add("stripe_payment_intent_id")
    if not locked.stripe_checkout_session_id:
        locked.stripe_checkout_session_id = session.id
        fields.add("stripe_checkout_session_id")
    if email and not locked.email and locked.erased_at is None:
        locked.email = email
        fields.add("email")
    if state.amount_refunded > locked.amount_refunded:
        locked.amount_refunded = state.amount_refunded
        fields.add("amount_refunded")
    return fields


def sync_payment_intent(payment_intent_id: str) -> FulfillmentResult:
    """Bring the Purchase paid through ``payment_intent_id`` in line with Stripe.

    For events that carry a PaymentIntent, a charge or a dispute rather than a session. The
    session is found from our own Purchase (``stripe_payment_intent_id``), else from the
    PaymentIntent's metadata, else by asking Stripe which session created the PaymentIntent.
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
    tags = metadata.as_dict(getattr(intent, "metadata", None))
    if not metadata.is_ours(tags):
        return FulfillmentResult(None, "not_ours", "not this installation's payment")
    return sync_purchase_reference(tags.get(metadata.PURCHASE), payment_intent_id)


def sync_purchase_reference(public_id: Any, payment_intent_id: str = "") -> FulfillmentResult:
    """``fulfill_checkout`` for the purchase named in our metadata (``metadata.PURCHASE``)."""
    uid = metadata.parse_uuid(public_id)
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


def decide(purchase: Purchase, decision: ShopDecision, reason: str = "") -> FulfillmentResult:
    """Apply a shop decision to ``purchase`` through the table, under a row lock.

    ``purchase`` is updated in place. Idempotent: a decision that does not apply to the
    purchase's state changes nothing (``result.changed`` is False).
    """
    with transaction.atomic():
        locked = Purchase.objects.select_for_update().get(pk=purchase.pk)
        fields = {"updated_at"}
        result = apply(locked, decision, reason, fields)
        if result.changed:
            locked.save(update_fields=sorted(fields))
    for name in ("status", "status_reason", *TIMESTAMPS.values(), "paid_at", "updated_at"):
        setattr(purchase, name, getattr(locked, name))
    if result.changed:
        logger.info("Purchase %s %s: %s", locked.public_id, result.outcome, result.reason)
    return FulfillmentResult(purchase, result.outcome, result.reason)


#: ``revoke_purchase``'s statuses and the shop decision each one stands for.
_REVOKING = {S.REVOKED: "revoke", S.REFUNDED: "refund", S.DISPUTED: "suspend"}


def revoke_purchase(purchase: Purchase, *, reason: str, status: S = S.REVOKED) -> bool:
    """Take access away: ``revoked`` (final, the default), ``refunded`` (final, recorded after a
    refund made outside Stripe's events) or ``disputed`` (suspended; a paid purchase only).

    Returns whether anything changed. Final states revoke the purchase's links too.
    """
    if status not in _REVOKING:
        raise ValueError(f"revoke_purchase cannot set status {status!r}")
    return decide(purchase, _REVOKING[status], reason).changed  # type: ignore[arg-type]


def restore_purchase(purchase: Purchase) -> bool:
    """Give a suspended (disputed after being paid) purchase its access back."""
    return decide(purchase, "restore", "").changed


def grant_purchase(product: Any, email: str) -> Purchase:
    """A complimentary purchase of ``product`` (a product page) for ``email``: no Stripe, no
    money (amount 0, marked ``Source.GRANT``), delivered like a paid one (``purchase_paid``, the
    delivery email) through the same table. Call it inside the caller's transaction to record
    who granted it and why (the shop desk logs both)."""
    purchase = Purchase.objects.create(
        product=product,
        product_title=product.title,
        amount=0,
        currency=product.currency,
        email=email,
        source=Purchase.Source.GRANT,
    )
    result = decide(purchase, "grant")
    if not result.changed:  # pragma: no cover (a new pending purchase always moves)
        raise RuntimeError(f"grant of purchase {purchase.pk}: {result.outcome}")
    return purchase


def fail_checkout(purchase: Purchase, reason: str) -> bool:
    """Mark a pending purchase failed: its Checkout Session could not be created."""
    return decide(purchase, "checkout_failed", reason[:2000]).changed
