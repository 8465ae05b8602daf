"""The emulator's API endpoints (JSON shaped like Stripe's) and its hosted checkout page."""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from wagtail_paid_delivery.conf import app_settings
from wagtail_paid_delivery.currencies import format_price

from . import webhooks
from .models import EmulatedPrice, EmulatedSession, new_id

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


@api_view
@require_POST
def api_sessions(request: HttpRequest) -> HttpResponse:
    """POST /v1/checkout/sessions, honouring ``Idempotency-Key`` like Stripe."""
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
    if "price" in item:
        price = EmulatedPrice.objects.filter(pk=item["price"]).first()
        if price is None:
            raise LookupError(f"No such price: '{item['price']}'")
        product_name, unit_amount, currency, price_id = (
            price.product_name,
            price.unit_amount,
            price.currency,
            price.id,
        )
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
@require_GET
def api_price(request: HttpRequest, price_id: str) -> HttpResponse:
    price = EmulatedPrice.objects.filter(pk=price_id).first()
    if price is None:
        return stripe_error(404, f"No such price: '{price_id}'", code="resource_missing")
    return JsonResponse(price.as_stripe())


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
    email = session.customer_email
    if request.method == "POST" and session.status == "open":
        if request.POST.get("action") == "cancel":
            return HttpResponseSeeOther(session.cancel_url or "/")
        email = request.POST.get("email", "").strip()
        try:
            validate_email(email)
        except ValidationError:
            error = "Enter the email address the receipt and download link go to."
        else:
            return _pay(request, session, email)
    response = render(
        request,
        "stripe_emulator/checkout.html",
        {
            "session": session,
            "amount": format_price(session.amount_total, session.currency.upper()),
            "email": email,
            "error": error,
            "success_url": session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id),
        },
        status=400 if error else 200,
    )
    response["Cache-Control"] = "no-store"
    return response


def _pay(request: HttpRequest, session: EmulatedSession, email: str) -> HttpResponse:
    secrets = app_settings.webhook_secrets
    url = webhook_url(request)
    with transaction.atomic():
        locked = EmulatedSession.objects.select_for_update().get(pk=session.pk)
        if locked.status == "open":
            locked.status = "complete"
            locked.payment_status = "paid"
            locked.email = email
            locked.payment_intent_id = new_id("pi")
            locked.completed_at = timezone.now()
            locked.save()
            if secrets:
                transaction.on_commit(lambda: webhooks.deliver_later(locked.id, url, secrets[0]))
            else:
                locked.webhook_result = "not sent: no STRIPE_WEBHOOK_SECRETS configured"
                locked.save(update_fields=["webhook_result"])
    return HttpResponseSeeOther(locked.success_url.replace("{CHECKOUT_SESSION_ID}", locked.id))
