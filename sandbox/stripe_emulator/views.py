"""The emulator's API endpoints (JSON shaped like Stripe's) and its hosted checkout page."""

from __future__ import annotations

import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from wagtail_paid_delivery.conf import app_settings
from wagtail_paid_delivery.currencies import exponent, format_price, to_major

from . import actions, webhooks
from .models import (
    PROMOTION_CODES,
    TAX_PERCENT,
    EmulatedEvent,
    EmulatedPrice,
    EmulatedSession,
    EmulatorSwitches,
    new_id,
)

# API -------------------------------------------------------------------------------------------


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", raw_key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts:
            node[parts[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def stripe_error(
    status: int, message: str, *, type_: str = "invalid_request_error", **extra: Any
) -> JsonResponse:
    error = {"type": type_, "message": message, "code": None, "param": None, **extra}
    return JsonResponse({"error": error}, status=status)


def _authorized(request: HttpRequest) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    expected = str(app_settings.STRIPE_SECRET_KEY or "")
    return bool(given and expected) and hmac.compare_digest(given, expected)


def api_view(view: Any) -> Any:
    """Bearer-key auth and JSON errors, as api.stripe.com answers."""

    @csrf_exempt
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # Stripe's own API answers in a few hundred milliseconds; a benchmark can say how many.
        delay_ms = getattr(settings, "STRIPE_EMULATOR_DELAY_MS", 0)
        if delay_ms:
            time.sleep(delay_ms / 1000)
        if not _authorized(request):
            return stripe_error(401, "Invalid API Key provided.")
        response = view(request, *args, **kwargs)
        response["Request-Id"] = new_id("req")
        return response

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def hosted_url(request: HttpRequest, session: EmulatedSession) -> str:
    return request.build_absolute_uri(reverse("stripe_emulator:checkout", args=[session.id]))


def _expand(request: HttpRequest) -> tuple[str, ...]:
    return tuple(v for k in request.GET for v in request.GET.getlist(k) if k.startswith("expand"))


def _list(data: list[dict[str, Any]], url: str) -> JsonResponse:
    return JsonResponse({"object": "list", "data": data, "has_more": False, "url": url})


@api_view
@require_http_methods(["GET", "POST"])
def api_sessions(request: HttpRequest) -> HttpResponse:
    """POST /v1/checkout/sessions, honouring ``Idempotency-Key`` like Stripe; GET lists them
    (``?payment_intent=`` filters, as Stripe's list does)."""
    if request.method == "GET":
        sessions = EmulatedSession.objects.all()
        if request.GET.get("payment_intent"):
            sessions = sessions.filter(payment_intent_id=request.GET["payment_intent"])
        limit = min(int(request.GET.get("limit") or 10), 100)
        data = [s.as_stripe(url=hosted_url(request, s)) for s in sessions[:limit]]
        return _list(data, "/v1/checkout/sessions")
    body = request.body.decode()
    key = request.headers.get("Idempotency-Key") or None
    if key:
        existing = EmulatedSession.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return _replay(request, existing, body)
    params = decode_form(body)
    try:
        fields = _session_fields(params)
    except ValueError as exc:
        return stripe_error(400, str(exc))
    except LookupError as exc:
        return stripe_error(400, str(exc), code="resource_missing", param="line_items[0][price]")
    try:
        session = EmulatedSession.objects.create(
            idempotency_key=key, request_fingerprint=body, params=params, **fields
        )
    except IntegrityError:  # the same key, in a concurrent request
        return _replay(request, EmulatedSession.objects.get(idempotency_key=key), body)
    return JsonResponse(session.as_stripe(url=hosted_url(request, session)))


def _replay(request: HttpRequest, session: EmulatedSession, body: str) -> HttpResponse:
    if session.request_fingerprint != body:
        return stripe_error(
            400,
            "Keys for idempotent requests can only be used with the same parameters they "
            "were first used with.",
            type_="idempotency_error",
        )
    response = JsonResponse(session.as_stripe(url=hosted_url(request, session)))
    response["Idempotent-Replayed"] = "true"
    return response


def _session_fields(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("mode") != "payment":
        raise ValueError("The emulator supports mode=payment only.")
    items = params.get("line_items")
    if not isinstance(items, list) or len(items) != 1:
        raise ValueError("The emulator supports exactly one line item.")
    item = items[0]
    if not params.get("success_url"):
        raise ValueError("Missing required param: success_url.")
    custom: dict[str, Any] = {}
    if "price" in item:
        price = EmulatedPrice.objects.filter(pk=item["price"]).first()
        if price is None:
            raise LookupError(f"No such price: '{item['price']}'")
        product_name, currency, price_id = price.product_name, price.currency, price.id
        unit_amount = price.unit_amount
        if price.custom_minimum is not None:
            # The buyer types the amount on the hosted page; it starts at the preset.
            unit_amount = price.custom_preset or price.custom_minimum
            custom = {
                "custom_minimum": price.custom_minimum,
                "custom_maximum": price.custom_maximum,
            }
    else:
        data = item.get("price_data") or {}
        try:
            unit_amount = int(data["unit_amount"])
            currency = str(data["currency"]).lower()
            product_name = str(data["product_data"]["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"line_items[0][price_data] is incomplete: {exc}") from None
        price_id = new_id("price")
    return {
        "product_name": product_name,
        "unit_amount": unit_amount,
        "quantity": int(item.get("quantity") or 1),
        "currency": currency,
        "price_id": price_id,
        "success_url": params["success_url"],
        "cancel_url": params.get("cancel_url", ""),
        "client_reference_id": params.get("client_reference_id", ""),
        "customer_email": params.get("customer_email", ""),
        "metadata": params.get("metadata") or {},
        "payment_intent_metadata": (params.get("payment_intent_data") or {}).get("metadata") or {},
        **custom,
    }


@api_view
@require_GET
def api_session(request: HttpRequest, session_id: str) -> HttpResponse:
    session = EmulatedSession.objects.filter(pk=session_id).first()
    if session is None:
        return stripe_error(
            404, f"No such checkout.session: '{session_id}'", code="resource_missing"
        )
    return JsonResponse(
        session.as_stripe(url=hosted_url(request, session), expand=_expand(request))
    )


@api_view
@require_GET
def api_line_items(request: HttpRequest, session_id: str) -> HttpResponse:
    session = EmulatedSession.objects.filter(pk=session_id).first()
    if session is None:
        return stripe_error(
            404, f"No such checkout.session: '{session_id}'", code="resource_missing"
        )
    return JsonResponse(session.line_items())


@api_view
@require_POST
def api_prices(request: HttpRequest) -> HttpResponse:
    """POST /v1/prices: a one-time Price, fixed (``unit_amount``) or chosen by the buyer
    (``custom_unit_amount[enabled]=true`` with ``minimum``, ``maximum``, ``preset``), with
    ``product_data[name]``; honours ``Idempotency-Key`` like Stripe."""
    key = request.headers.get("Idempotency-Key") or None
    existing = EmulatedPrice.objects.filter(idempotency_key=key).first() if key else None
    if existing is not None:
        return JsonResponse(existing.as_stripe())
    try:
        fields = _price_fields(decode_form(request.body.decode()))
    except (KeyError, TypeError, ValueError) as exc:
        return stripe_error(400, f"The Price is incomplete or invalid: {exc}")
    try:
        price = EmulatedPrice.objects.create(idempotency_key=key, **fields)
    except IntegrityError:  # the same key, in a concurrent request
        price = EmulatedPrice.objects.get(idempotency_key=key)
    return JsonResponse(price.as_stripe())


def _price_fields(params: dict[str, Any]) -> dict[str, Any]:
    def amount(value: Any) -> int | None:
        if value in (None, ""):
            return None
        number = int(value)
        if number < 0:
            raise ValueError("amounts cannot be negative")
        return number

    fields: dict[str, Any] = {
        "currency": str(params["currency"]).lower()[:3],
        "product_name": str(params["product_data"]["name"])[:255],
        "metadata": params.get("metadata") or {},
    }
    custom = params.get("custom_unit_amount") or {}
    if str(custom.get("enabled")).lower() == "true":
        fields["custom_minimum"] = amount(custom.get("minimum")) or 0
        fields["custom_maximum"] = amount(custom.get("maximum"))
        fields["custom_preset"] = amount(custom.get("preset"))
    else:
        fields["unit_amount"] = amount(params["unit_amount"])
        if fields["unit_amount"] is None:
            raise ValueError("unit_amount is required")
    return fields


@api_view
@require_GET
def api_price(request: HttpRequest, price_id: str) -> HttpResponse:
    price = EmulatedPrice.objects.filter(pk=price_id).first()
    if price is None:
        return stripe_error(404, f"No such price: '{price_id}'", code="resource_missing")
    return JsonResponse(price.as_stripe())


@api_view
@require_GET
def api_payment_intent(request: HttpRequest, payment_intent_id: str) -> HttpResponse:
    session = EmulatedSession.objects.filter(payment_intent_id=payment_intent_id).first()
    if session is None:
        return stripe_error(
            404, f"No such payment_intent: '{payment_intent_id}'", code="resource_missing"
        )
    expand_charge = "latest_charge" in _expand(request)
    return JsonResponse(session.payment_intent(expand_charge=expand_charge))


def _session_for_charge(charge_id: str) -> EmulatedSession | None:
    if charge_id.startswith("ch_"):
        found = EmulatedSession.objects.filter(charge_id=charge_id).first()
        if found is not None:
            return found
        # Sessions paid before charges were stored: the id derives from the PaymentIntent's.
        found = EmulatedSession.objects.filter(payment_intent_id="pi_" + charge_id[3:]).first()
        if found is not None and found.latest_charge_id == charge_id:
            return found
    return None


@api_view
@require_GET
def api_charge(request: HttpRequest, charge_id: str) -> HttpResponse:
    session = _session_for_charge(charge_id)
    if session is None:
        return stripe_error(404, f"No such charge: '{charge_id}'", code="resource_missing")
    return JsonResponse(session.charge())


@api_view
@require_GET
def api_disputes(request: HttpRequest) -> HttpResponse:
    sessions = EmulatedSession.objects.exclude(dispute_id="")
    if request.GET.get("payment_intent"):
        sessions = sessions.filter(payment_intent_id=request.GET["payment_intent"])
    if request.GET.get("charge"):
        sessions = sessions.filter(charge_id=request.GET["charge"])
    data = [d for d in (s.dispute() for s in sessions.order_by("-dispute_created")[:100]) if d]
    return _list(data, "/v1/disputes")


@api_view
@require_GET
def api_dispute(request: HttpRequest, dispute_id: str) -> HttpResponse:
    session = EmulatedSession.objects.filter(dispute_id=dispute_id).first()
    if session is None:
        return stripe_error(404, f"No such dispute: '{dispute_id}'", code="resource_missing")
    return JsonResponse(session.dispute())


def _refund_error(session_id: str, exc: actions.ActionRefused) -> JsonResponse:
    """Stripe's 400 for a refund it refuses, with its error code."""
    why = str(exc)
    if "idempotency" in why:
        return stripe_error(
            400,
            "Keys for idempotent requests can only be used with the same parameters they "
            "were first used with.",
            type_="idempotency_error",
        )
    code = "amount_too_large" if "cannot refund" in why else None
    if ": 0 left" in why:
        code = "charge_already_refunded"
    elif "disputed" in why:
        code = "charge_disputed"
    return stripe_error(400, f"Cannot refund {session_id}: {why}.", code=code)


@api_view
@require_POST
def api_refunds(request: HttpRequest) -> HttpResponse:
    """POST /v1/refunds with ``payment_intent`` (``amount``, ``reason``, ``metadata``),
    honouring ``Idempotency-Key`` like Stripe; ``refund.created`` and ``charge.refunded``
    follow, signed, as for a refund made on the dashboard."""
    body = request.body.decode()
    params = decode_form(body)
    payment_intent_id = str(params.get("payment_intent") or "")
    if not payment_intent_id:
        return stripe_error(400, "Missing required param: payment_intent.", param="payment_intent")
    key = request.headers.get("Idempotency-Key") or None
    try:
        session, made, events = actions.create_refund(payment_intent_id, params, key, body)
    except LookupError:
        return stripe_error(
            404, f"No such payment_intent: '{payment_intent_id}'", code="resource_missing"
        )
    except actions.ActionRefused as exc:
        return _refund_error(payment_intent_id, exc)
    send_events(request, session, events)
    response = JsonResponse(made)
    if not events:
        response["Idempotent-Replayed"] = "true"
    return response


@api_view
@require_POST
def api_control(request: HttpRequest, session_id: str, action: str) -> HttpResponse:
    """POST /_emulator/sessions/<id>/<action>: not a Stripe endpoint. This app's ``manage.py
    trigger`` (through ``control.emulator_control``) uses it to make something happen (pay,
    refund, dispute…) as a buyer or bank would; the signed webhooks Stripe would send follow."""
    form = decode_form(request.body.decode())
    params = {k: v for k, v in form.items() if k in ("email", "amount")}
    try:
        session, events = actions.perform(session_id, action, params)
    except LookupError:
        return stripe_error(
            404, f"No such checkout.session: '{session_id}'", code="resource_missing"
        )
    except actions.ActionRefused as exc:
        return stripe_error(400, f"Cannot {action}: {exc}.")
    held = form.get("webhook") == "hold" or EmulatorSwitches.current().webhooks_held
    send_events(request, session, events, hold=held)
    return JsonResponse(
        {
            "session": session.as_stripe(url=hosted_url(request, session)),
            "events": [type_ for type_, _ in events],
            "webhooks": "held" if held else "sent",
        }
    )


def send_events(
    request: HttpRequest, session: EmulatedSession, events: actions.Events, *, hold: bool = False
) -> None:
    """Keep the action's events (``GET /v1/events`` lists them) and deliver them, signed, once
    the change is committed, as Stripe would; ``hold`` (or the dashboard's switch) keeps them
    from the webhook, as an endpoint that is down would."""
    if not events:
        return
    # Kept to the microsecond (Stripe's ``created`` is whole seconds), so the list is in the
    # order the events were made, as Stripe's is.
    now = timezone.now()
    times = [now + timedelta(microseconds=i) for i in range(len(events))]
    made = [
        webhooks.make_event(obj, type_, int(at.timestamp()))
        for (type_, obj), at in zip(events, times, strict=True)
    ]
    secrets = app_settings.webhook_secrets
    held = hold or EmulatorSwitches.current().webhooks_held
    why = ""
    if held:
        why = "held back (webhooks off)"
    elif not secrets:
        why = "not sent: no STRIPE_WEBHOOK_SECRETS configured"
    for event, at in zip(made, times, strict=True):
        EmulatedEvent.objects.create(
            id=event["id"],
            type=event["type"],
            created=at,
            session=session,
            payload=event,
            delivery=why or "sending",
        )
    if why:
        EmulatedSession.objects.filter(pk=session.pk).update(webhook_result=why)
        return
    url = webhook_url(request)
    payloads = [json.dumps(event).encode() for event in made]
    transaction.on_commit(lambda: webhooks.deliver_later(session.id, url, secrets[0], payloads))


#: ``created[op]`` → the lookup on the event's creation time (to the microsecond) that means
#: the same as Stripe's comparison of whole seconds.
_CREATED = {"gt": ("gte", 1), "gte": ("gte", 0), "lt": ("lt", 0), "lte": ("lt", 1)}


@api_view
@require_GET
def api_events(request: HttpRequest) -> HttpResponse:
    """GET /v1/events, as Stripe lists them: newest first, the last 30 days, ``types[]`` (or
    ``type``), ``created`` (a time, or ``[gt]``, ``[gte]``, ``[lt]``, ``[lte]``), ``limit`` (10
    by default, at most 100) and ``starting_after``."""
    params = decode_form(request.META.get("QUERY_STRING", ""))
    events = EmulatedEvent.objects.filter(created__gte=timezone.now() - timedelta(days=30))
    # types[0]=a&types[1]=b (stripe-python), types[]=a&types[]=b, or type=a
    types = [
        v
        for k in request.GET
        if k == "type" or k.startswith("types[")
        for v in request.GET.getlist(k)
    ]
    if types:
        events = events.filter(type__in=types)
    created = params.get("created")
    bounds = created if isinstance(created, dict) else {}
    if created not in (None, "") and not isinstance(created, dict):
        bounds = {"gte": created, "lte": created}
    try:
        for op, value in bounds.items():
            lookup, shift = _CREATED[op]
            moment = datetime.fromtimestamp(int(value) + shift, tz=UTC)
            events = events.filter(**{f"created__{lookup}": moment})
        limit = int(params.get("limit") or 10)
    except (KeyError, ValueError, OverflowError, OSError):
        return stripe_error(400, "Invalid created or limit parameter.")
    if not 1 <= limit <= 100:
        return stripe_error(400, "limit must be an integer from 1 to 100.", param="limit")
    if params.get("starting_after"):
        cursor = EmulatedEvent.objects.filter(pk=params["starting_after"]).first()
        if cursor is None:
            return stripe_error(
                404, f"No such event: '{params['starting_after']}'", code="resource_missing"
            )
        events = events.filter(
            Q(created__lt=cursor.created) | Q(created=cursor.created, id__lt=cursor.id)
        )
    page = list(events.order_by("-created", "-id")[: limit + 1])
    return JsonResponse(
        {
            "object": "list",
            "data": [event.payload for event in page[:limit]],
            "has_more": len(page) > limit,
            "url": "/v1/events",
        }
    )


# The hosted page -------------------------------------------------------------------------------


class HttpResponseSeeOther(HttpResponse):
    status_code = 303

    def __init__(self, location: str) -> None:
        super().__init__()
        self["Location"] = location


def webhook_url(request: HttpRequest) -> str:
    explicit = getattr(settings, "STRIPE_EMULATOR_WEBHOOK_URL", None)
    if explicit:
        return explicit
    base = getattr(settings, "SANDBOX_URL", None) or f"{request.scheme}://{request.get_host()}"
    return base.rstrip("/") + reverse("wagtail_paid_delivery:stripe_webhook")


@require_http_methods(["GET", "POST"])
def hosted_checkout(request: HttpRequest, session_id: str) -> HttpResponse:
    session = get_object_or_404(EmulatedSession, pk=session_id)
    error = ""
    email = session.email or session.customer_email
    promotion_code = request.POST.get("promotion_code", "").strip()[:32]
    action = request.POST.get("action")
    if request.method == "POST" and session.status == "open":
        if action == "cancel":
            return HttpResponseSeeOther(session.cancel_url or "/")
        email = request.POST.get("email", "").strip()
        try:
            validate_email(email)
        except ValidationError:
            error = "Enter the email address the receipt and download link go to."
        else:
            if action not in ("pay", "pay_later", "decline"):
                action = "pay"
            params: dict[str, Any] = {"email": email, "promotion_code": promotion_code}
            if action != "decline" and session.custom_minimum is not None:
                params["amount"] = _chosen_amount(request.POST.get("amount", ""), session)
            try:
                session, events = actions.perform(session.pk, action, params)
            except actions.ActionRefused as exc:
                error = f"This payment cannot go ahead: {exc}."
            else:
                send_events(request, session, events)
                if action == "decline":
                    # Like Stripe's page: the error is shown and the buyer may try again.
                    return HttpResponseSeeOther(request.path)
                return HttpResponseSeeOther(
                    session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)
                )
    response = render(
        request,
        "stripe_emulator/checkout.html",
        {
            "session": session,
            "amount": format_price(session.amount_total, session.currency.upper()),
            "discount": format_price(session.amount_discount, session.currency.upper()),
            "tax": format_price(session.amount_tax, session.currency.upper()),
            "tax_percent": TAX_PERCENT,
            "promotion_code": promotion_code,
            "promotion_hint": next(iter(PROMOTION_CODES)),
            "email": email,
            "error": error,
            "declined": session.status == "open" and session.payment_error,
            "success_url": session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id),
            "dashboard_url": reverse("stripe_emulator:dashboard"),
            "chosen_amount": request.POST.get("amount", "")[:20]
            or to_major(session.unit_amount, session.currency.upper()),
            "minimum": format_price(session.custom_minimum or 0, session.currency.upper()),
        },
        status=400 if error else 200,
    )
    response["Cache-Control"] = "no-store"
    return response


def _chosen_amount(typed: str, session: EmulatedSession) -> int:
    """The amount the buyer typed (major units, "12.50") in minor units; -1 when it is not an
    amount in the session's currency, which the pay action refuses as below the minimum."""
    try:
        major = Decimal(typed.strip().replace(",", "."))
    except InvalidOperation:
        return -1
    minor = major.scaleb(exponent(session.currency.upper())) if major.is_finite() else None
    if minor is None or minor != minor.to_integral_value() or minor > 10**10:
        return -1
    return int(minor)


@require_GET
def receipt(request: HttpRequest, charge_id: str) -> HttpResponse:
    """The receipt Stripe hosts for a charge (what a Charge's ``receipt_url`` opens)."""
    session = _session_for_charge(charge_id)
    if session is None:
        return HttpResponse("No such receipt.", status=404, content_type="text/plain")
    currency = session.currency.upper()
    return render(
        request,
        "stripe_emulator/receipt.html",
        {
            "session": session,
            "charge_id": charge_id,
            "amount": format_price(session.amount_total, currency),
            "subtotal": format_price(session.amount_subtotal, currency),
            "discount": format_price(session.amount_discount, currency),
            "tax": format_price(session.amount_tax, currency),
            "refunded": format_price(session.amount_refunded, currency),
        },
    )


# The dashboard --------------------------------------------------------------------------------

#: Button labels and what each makes happen, for the dashboard.
ACTION_LABELS = {
    "pay": ("Pay", "card payment succeeds"),
    "pay_later": ("Pay later", "bank debit, still processing"),
    "decline": ("Decline card", "payment fails, session stays open"),
    "expire": ("Expire", "session expires unpaid"),
    "succeed": ("Debit succeeds", "async_payment_succeeded"),
    "fail": ("Debit fails", "async_payment_failed"),
    "refund": ("Refund in full", "refund.created, charge.refunded"),
    "dispute": ("Dispute", "charge.dispute.created"),
    "win": ("Win dispute", "charge.dispute.closed (won)"),
    "lose": ("Lose dispute", "charge.dispute.closed (lost)"),
}


@require_http_methods(["GET", "POST"])
def dashboard(request: HttpRequest) -> HttpResponse:
    """Every session, its state as a shop owner would read it, and what can happen next."""
    message = ""
    if request.method == "POST" and "webhooks" in request.POST:
        held = request.POST["webhooks"] == "hold"
        EmulatorSwitches.objects.update_or_create(pk=1, defaults={"webhooks_held": held})
        message = (
            "Webhooks held back: events are made and listed at /v1/events, never delivered."
            if held
            else "Webhooks are sent again (events made meanwhile stay undelivered)."
        )
        return HttpResponseSeeOther(f"{request.path}?done={message}")
    if request.method == "POST":
        session_id = request.POST.get("session", "")
        action = request.POST.get("action", "")
        params: dict[str, Any] = {}
        if request.POST.get("amount"):
            session = EmulatedSession.objects.filter(pk=session_id).first()
            currency = session.currency if session else "usd"
            try:
                major = Decimal(request.POST["amount"])
            except InvalidOperation:
                major = Decimal(0)
            params["amount"] = int(major.scaleb(exponent(currency.upper())))
        try:
            session, events = actions.perform(session_id, action, params)
        except (LookupError, actions.ActionRefused) as exc:
            message = f"Could not {action.replace('_', ' ')}: {exc}."
        else:
            send_events(request, session, events)
            sent = ", ".join(type_ for type_, _ in events) or "no event"
            verb = "makes (held back)" if EmulatorSwitches.current().webhooks_held else "sends"
            message = f"{ACTION_LABELS.get(action, (action,))[0]}: {session.id[-8:]} {verb} {sent}."
            return HttpResponseSeeOther(f"{request.path}?done={message}")
    message = message or request.GET.get("done", "")
    sessions = list(EmulatedSession.objects.order_by("-created")[:50])
    shop = _shop_statuses(sessions)
    rows = [
        {
            "session": s,
            "amount": format_price(s.amount_total, s.currency.upper()),
            "refunded": format_price(s.amount_refunded, s.currency.upper())
            if s.amount_refunded
            else "",
            "actions": [(a, *ACTION_LABELS.get(a, (a, ""))) for a in actions.available(s)],
            "partial_max": str(to_major(s.amount_total - s.amount_refunded, s.currency.upper())),
            "step": str(Decimal(1).scaleb(-exponent(s.currency.upper()))),
            "hosted_url": reverse("stripe_emulator:checkout", args=[s.id]),
            "shop": shop.get(s.id, ""),
        }
        for s in sessions
    ]
    response = render(
        request,
        "stripe_emulator/dashboard.html",
        {
            "rows": rows,
            "message": message,
            "webhooks_held": EmulatorSwitches.current().webhooks_held,
            "events": EmulatedEvent.objects.order_by("-created", "-id")[:20],
        },
        status=400 if message and request.method == "POST" else 200,
    )
    response["Cache-Control"] = "no-store"
    return response


def _shop_statuses(sessions: list[EmulatedSession]) -> dict[str, str]:
    """What the sandbox shop itself now says about each session's purchase (its own database;
    a real Stripe Dashboard could not show this, the emulator shows it to save a trip)."""
    from wagtail_paid_delivery.models import Purchase

    found = Purchase.objects.filter(stripe_checkout_session_id__in=[s.id for s in sessions])
    return dict(found.values_list("stripe_checkout_session_id", "status"))
