"""An in-memory Stripe for tests, plugged in below stripe-python at the HTTP layer.

``FakeStripe`` is a ``stripe.HTTPClient``: stripe-python builds, encodes, sends, retries and parses
requests for real, and only the socket is replaced. Objects are shaped like the ones in Stripe's
OpenAPI fixtures (``checkout.session``, ``item``, ``price``, ``payment_intent``, ``charge``,
``refund``, ``dispute``, ``event``).

Like Stripe, it keeps an event for every change it makes (``events``, newest last) and lists them
at ``GET /v1/events``; it never delivers them itself, so a test either posts one to the webhook
(``post_event(client, fake.last_event("charge.refunded"))``) or leaves it undelivered, as a
webhook outage would.

Use the ``fake_stripe`` fixture (tests/conftest.py), then::

    session = stripe_api.create_checkout_session({...}, idempotency_key="k")
    fake_stripe.pay(session.id, email="buyer@example.com")
    payload = json.dumps(event_for(fake_stripe.sessions[session.id])).encode()
    client.post(url, payload, content_type="application/json",
                HTTP_STRIPE_SIGNATURE=sign_payload(payload, "whsec_tests"))
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

WEBHOOK_URL = "/shop/stripe/webhook/"
DEFAULT_SECRET = "whsec_tests"

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{next(_ids):06d}{secrets.token_hex(8)}"


def sign_payload(payload: bytes, secret: str = DEFAULT_SECRET, timestamp: int | None = None) -> str:
    """A real ``Stripe-Signature`` header: ``t=<unix time>,v1=<HMAC-SHA256 of "t.payload">``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{ts}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={signature}"


def event_for(
    session: dict[str, Any],
    type: str = "checkout.session.completed",  # noqa: A002  (Stripe's field name)
    livemode: bool = False,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An event envelope around a copy of ``session``, as Stripe delivers it to a webhook."""
    obj = copy.deepcopy(session)
    # Webhook payloads carry the object as stored, never its expansions.
    obj.pop("line_items", None)
    if isinstance(obj.get("payment_intent"), dict):
        obj["payment_intent"] = obj["payment_intent"]["id"]
    obj["livemode"] = livemode
    return {
        "id": event_id or new_id("evt").replace("_test_", "_"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
    }


def post_event(
    client: Any,
    event: dict[str, Any] | bytes,
    *,
    secret: str = DEFAULT_SECRET,
    timestamp: int | None = None,
    url: str = WEBHOOK_URL,
) -> Any:
    """POST ``event`` to the webhook with a valid signature through Django's test client."""
    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    return client.post(
        url,
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(payload, secret, timestamp),
    )


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][0][c]=v``) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", raw_key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


@dataclass
class FakeRequest:
    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class FakeStripe(stripe.HTTPClient):
    """An in-memory Stripe answering the few endpoints this package uses."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, dict[str, Any]] = {}
        self.line_items: dict[str, list[dict[str, Any]]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        #: Webhook endpoints on file (``GET /v1/webhook_endpoints``), as Stripe shapes them.
        self.webhook_endpoints: list[dict[str, Any]] = []
        #: Calls to the emulator control endpoint (``POST /_emulator/sessions/<id>/<action>``).
        self.controls: list[tuple[str, str, dict[str, Any]]] = []
        #: Every event Stripe would have sent, oldest first (``GET /v1/events`` lists them).
        self.events: list[dict[str, Any]] = []
        self.requests: list[FakeRequest] = []
        self.down: str | None = None
        #: Secret keys Stripe answers 401 for (revoked or rolled); keys not starting sk_ are too.
        self.rejected_keys: set[str] = set()
        #: Requests still answered before ``down`` takes effect (None: at once).
        self.down_after: int | None = None
        self._idempotent: dict[str, tuple[str, tuple[str, int, dict[str, str]]]] = {}
        self._lock = threading.RLock()

    # stripe.HTTPClient ----------------------------------------------------------------------

    def _sleep_time_seconds(self, num_retries: int) -> float:
        return 0.0  # stripe-python's backoff is real; tests need not wait for it.

    def request(
        self,
        method: str,
        url: str,
        headers: Any,
        post_data: Any = None,
        *,
        _usage: Any = None,
    ) -> tuple[str, int, dict[str, str]]:
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = decode_form(parts.query if method == "get" else body)
        lower = {k.lower(): v for k, v in dict(headers or {}).items()}
        with self._lock:
            self.requests.append(FakeRequest(method.upper(), parts.path, params, lower))
            if self.down and self.down_after:
                self.down_after -= 1
                return self._answer(method, parts, params, lower, body)
            if self.down == "connection":
                raise stripe.APIConnectionError(
                    "Fake Stripe is down (connection refused).", should_retry=True
                )
            if self.down == "500":
                return self._error(500, "api_error", "Fake Stripe is down.")
            return self._answer(method, parts, params, lower, body)

    def _answer(
        self, method: str, parts: Any, params: dict[str, Any], lower: dict[str, str], body: str
    ) -> tuple[str, int, dict[str, str]]:
        with self._lock:
            authorization = lower.get("authorization", "")
            if (
                not authorization.startswith("Bearer sk_")
                or authorization.removeprefix("Bearer ") in self.rejected_keys
            ):
                # Stripe's own answer: the key redacted in the message, no error code.
                key = authorization.removeprefix("Bearer ")
                message = f"Invalid API Key provided: {key[:8]}****{key[-4:]}"
                return self._error(401, "invalid_request_error", message)
            key = lower.get("idempotency-key")
            if method == "post" and key:
                fingerprint = f"{parts.path}?{body}"
                if key in self._idempotent:
                    seen, response = self._idempotent[key]
                    if seen != fingerprint:
                        return self._error(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same "
                            "parameters they were first used with.",
                        )
                    return response
                response = self._route(method, parts.path, params)
                if response[1] < 500:
                    self._idempotent[key] = (fingerprint, response)
                return response
            return self._route(method, parts.path, params)

    def request_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # routing ---------------------------------------------------------------------------------

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[str, int, dict]:
        if method == "post" and path == "/v1/checkout/sessions":
            try:
                return self._ok(self.create_session(params))
            except LookupError as exc:
                return self._error(400, "invalid_request_error", str(exc), code="resource_missing")
        if method == "get" and path == "/v1/checkout/sessions":
            pi = params.get("payment_intent")
            found = [self._public(x) for x in self.sessions.values() if x["payment_intent"] == pi]
            return self._ok(self._list(found, path))
        if method == "get" and path == "/v1/events":
            return self._list_events(params)
        if method == "post" and path == "/v1/refunds":
            return self._create_refund(params)
        if method == "get" and path == "/v1/account":
            return self._ok({"id": "acct_fake", "object": "account"})
        if method == "get" and path == "/v1/webhook_endpoints":
            return self._ok(self._list(self.webhook_endpoints, "/v1/webhook_endpoints"))
        if method == "get" and path == "/v1/disputes":
            pi = params.get("payment_intent")
            found = [d for d in self.disputes.values() if not pi or d["payment_intent"] == pi]
            found.sort(key=lambda d: d["created"], reverse=True)
            return self._ok(self._list(copy.deepcopy(found), path))
        if match := re.fullmatch(r"/v1/payment_intents/([^/]+)", path):
            pi = self.payment_intents.get(match[1])
            if pi is None or method != "get":
                return self._missing("payment_intent", match[1])
            obj = copy.deepcopy(pi)
            if "latest_charge" in (params.get("expand") or []) and obj["latest_charge"]:
                obj["latest_charge"] = copy.deepcopy(self.charges[obj["latest_charge"]])
            return self._ok(obj)
        if match := re.fullmatch(r"/v1/charges/([^/]+)", path):
            if method == "get" and match[1] in self.charges:
                return self._ok(self.charges[match[1]])
            return self._missing("charge", match[1])
        if match := re.fullmatch(r"/v1/disputes/([^/]+)", path):
            if method == "get" and match[1] in self.disputes:
                return self._ok(self.disputes[match[1]])
            return self._missing("dispute", match[1])
        if match := re.fullmatch(r"(?:/[^_]*)?/_emulator/sessions/([^/]+)/([a-z_-]+)", path):
            return self._control(match[1], match[2], params)
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)", path)
        if match and method == "get":
            return self._get_session(match[1], params.get("expand") or [])
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)/line_items", path)
        if match and match[1] in self.sessions and method == "get":
            return self._ok(self._line_item_list(match[1]))
        if method == "post" and path == "/v1/prices":
            return self._ok(self.create_custom_price(params))
        if match := re.fullmatch(r"/v1/prices/([^/]+)", path):
            if method == "get" and match[1] in self.prices:
                return self._ok(self.prices[match[1]])
            return self._missing("price", match[1])
        return self._error(404, "invalid_request_error", f"Unrecognized request URL ({path}).")

    def _get_session(self, session_id: str, expand: list[str]) -> tuple[str, int, dict]:
        session = self.sessions.get(session_id)
        if session is None:
            return self._missing("checkout.session", session_id)
        obj = copy.deepcopy(session)
        if "line_items" in expand:
            obj["line_items"] = self._line_item_list(session_id)
        # "payment_intent.latest_charge" expands the PaymentIntent too, as on Stripe.
        nested = "payment_intent.latest_charge" in expand
        if ("payment_intent" in expand or nested) and obj["payment_intent"]:
            obj["payment_intent"] = intent = copy.deepcopy(
                self.payment_intents[obj["payment_intent"]]
            )
            if nested and intent["latest_charge"]:
                intent["latest_charge"] = copy.deepcopy(self.charges[intent["latest_charge"]])
        return self._ok(obj)

    @staticmethod
    def _list(data: list[dict[str, Any]], url: str) -> dict[str, Any]:
        return {"object": "list", "data": data, "has_more": False, "url": url}

    def _list_events(self, params: dict[str, Any]) -> tuple[str, int, dict[str, str]]:
        """``GET /v1/events`` as Stripe answers it: newest first, ``types[]``, ``created[gt]``
        (and gte, lt, lte), ``limit`` (10 by default, 100 at most), ``starting_after``."""
        types = params.get("types") or ([params["type"]] if params.get("type") else None)
        created = params.get("created")
        bounds = created if isinstance(created, dict) else {}
        if created is not None and not isinstance(created, dict):
            bounds = {"gte": created, "lte": created}
        tests = {
            "gt": lambda c, v: c > v,
            "gte": lambda c, v: c >= v,
            "lt": lambda c, v: c < v,
            "lte": lambda c, v: c <= v,
        }
        found = [
            e
            for e in reversed(self.events)  # newest first; equal seconds: last made first
            if (not types or e["type"] in types)
            and all(tests[op](e["created"], int(v)) for op, v in bounds.items() if op in tests)
        ]
        found.sort(key=lambda e: e["created"], reverse=True)  # stable: keeps the above
        after = params.get("starting_after")
        if after:
            ids = [e["id"] for e in found]
            if after not in ids:
                return self._missing("event", after)
            found = found[ids.index(after) + 1 :]
        limit = int(params.get("limit") or 10)
        if not 1 <= limit <= 100:
            return self._error(400, "invalid_request_error", "limit must be from 1 to 100.")
        page = {
            "object": "list",
            "data": copy.deepcopy(found[:limit]),
            "has_more": len(found) > limit,
            "url": "/v1/events",
        }
        return self._ok(page)

    def _emit(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Keep the event Stripe makes for a change (the object as stored, at that moment)."""
        event = event_for(obj, type_, bool(obj.get("livemode")))
        self.events.append(event)
        return copy.deepcopy(event)

    def last_event(self, type_: str | None = None) -> dict[str, Any]:
        """The newest event (of ``type_``), as a webhook would carry it."""
        return copy.deepcopy(next(e for e in reversed(self.events) if type_ in (None, e["type"])))

    def _control(self, session_id: str, action: str, params: dict[str, Any]) -> tuple:
        """A tiny stand-in for the sandbox emulator's control endpoint (the trigger command)."""
        if session_id not in self.sessions:
            return self._missing("checkout.session", session_id)
        self.controls.append((session_id, action, params))
        actions = {
            "pay": lambda: self.pay(session_id, params.get("email") or "buyer@example.com"),
            "refund": lambda: (
                self.refund(session_id, int(params["amount"]))
                if params.get("amount")
                else self.refund(session_id)
            ),
            "expire": lambda: self.expire(session_id),
        }
        if action not in actions:
            return self._error(400, "invalid_request_error", f"Unknown action {action!r}.")
        try:
            actions[action]()
        except (KeyError, ValueError) as exc:
            return self._error(400, "invalid_request_error", f"Cannot {action}: {exc}")
        return self._ok({"session": self.session(session_id), "events": []})

    def _line_item_list(self, session_id: str) -> dict[str, Any]:
        return {
            "object": "list",
            "data": copy.deepcopy(self.line_items[session_id]),
            "has_more": False,
            "url": f"/v1/checkout/sessions/{session_id}/line_items",
        }

    @staticmethod
    def _ok(obj: dict[str, Any]) -> tuple[str, int, dict[str, str]]:
        return json.dumps(obj), 200, {"request-id": new_id("req")}

    @staticmethod
    def _error(
        status: int, type_: str, message: str, *, code: str | None = None, param: str | None = None
    ) -> tuple[str, int, dict[str, str]]:
        body = {"error": {"type": type_, "message": message, "code": code, "param": param}}
        headers = {"request-id": new_id("req")}
        if status >= 500:
            headers["stripe-should-retry"] = "true"
        return json.dumps(body), status, headers

    def _missing(self, kind: str, obj_id: str) -> tuple[str, int, dict[str, str]]:
        return self._error(
            404, "invalid_request_error", f"No such {kind}: '{obj_id}'", code="resource_missing"
        )

    # objects ---------------------------------------------------------------------------------

    def add_price(
        self,
        unit_amount: int = 1250,
        currency: str = "usd",
        *,
        price_id: str | None = None,
        product_name: str = "Product",
        active: bool = True,
    ) -> dict[str, Any]:
        """Register a one-time Price, as if created in the Stripe dashboard."""
        price_id = price_id or new_id("price").replace("_test_", "_")
        price = {
            "active": active,
            "billing_scheme": "per_unit",
            "created": int(time.time()),
            "currency": currency.lower(),
            "custom_unit_amount": None,
            "id": price_id,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "object": "price",
            "product": new_id("prod").replace("_test_", "_"),
            "recurring": None,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        }
        price["_product_name"] = product_name
        with self._lock:
            self.prices[price_id] = price
        return price

    def create_custom_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/prices with ``custom_unit_amount`` (pay what you want): no unit amount."""
        custom = params["custom_unit_amount"]
        minimum = int(custom["minimum"])
        price = self.add_price(
            minimum, params["currency"], product_name=params["product_data"]["name"]
        )
        with self._lock:
            price.update(unit_amount=None, unit_amount_decimal=None)
            price["custom_unit_amount"] = {
                "maximum": None,
                "minimum": minimum,
                "preset": int(custom.get("preset") or minimum),
            }
            price["metadata"] = dict(params.get("metadata") or {})
        return {k: v for k, v in price.items() if k[0] != "_"}

    def create_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a session from decoded params (what POST /v1/checkout/sessions does)."""
        items = []
        for raw in params.get("line_items") or []:
            quantity = int(raw.get("quantity", 1))
            if "price" in raw:
                if raw["price"] not in self.prices:
                    raise LookupError(f"No such price: '{raw['price']}'")
                price = {k: v for k, v in self.prices[raw["price"]].items() if k[0] != "_"}
                description = self.prices[raw["price"]]["_product_name"]
            else:
                data = raw["price_data"]
                description = (data.get("product_data") or {}).get("name", "")
                price = self.add_price(
                    int(data["unit_amount"]), data["currency"], product_name=description
                )
                price = {k: v for k, v in price.items() if k[0] != "_"}
            custom = price.get("custom_unit_amount")
            unit = custom["preset"] if custom else price["unit_amount"]
            amount = int(unit) * quantity
            items.append(
                {
                    "amount_discount": 0,
                    "amount_subtotal": amount,
                    "amount_tax": 0,
                    "amount_total": amount,
                    "currency": price["currency"],
                    "description": description,
                    "id": new_id("li").replace("_test_", "_"),
                    "object": "item",
                    "price": price,
                    "quantity": quantity,
                    "metadata": {},
                    "adjustable_quantity": None,
                }
            )
        subtotal = sum(i["amount_subtotal"] for i in items)
        session_id = new_id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "allow_promotion_codes": params.get("allow_promotion_codes") == "true" or None,
            "amount_subtotal": subtotal,
            "amount_total": subtotal,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": int(time.time()),
            "currency": items[0]["currency"] if items else None,
            "customer": None,
            "customer_details": None,
            "customer_email": params.get("customer_email"),
            "expires_at": int(time.time()) + 24 * 3600,
            "invoice": None,
            "livemode": False,
            "locale": params.get("locale"),
            "metadata": dict(params.get("metadata") or {}),
            "mode": params.get("mode", "payment"),
            "payment_intent": None,
            "payment_link": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "submit_type": params.get("submit_type"),
            "subscription": None,
            "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            # Not a Stripe field: what the session will copy onto its PaymentIntent.
            "_payment_intent_data": dict(params.get("payment_intent_data") or {}),
        }
        with self._lock:
            self.sessions[session_id] = session
            self.line_items[session_id] = items
        return self._public(session)

    @staticmethod
    def _public(session: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}

    def session(self, session_id: str) -> dict[str, Any]:
        """The session as Stripe stores it (no expansions): what a webhook event carries."""
        return self._public(self.sessions[session_id])

    # test controls ---------------------------------------------------------------------------

    def pay(
        self,
        session_id: str,
        email: str = "buyer@example.com",
        *,
        payment_status: str = "paid",
        amount_discount: int = 0,
        amount_tax: int = 0,
        tax_inclusive: bool = False,
        chosen_amount: int | None = None,
    ) -> dict[str, Any]:
        """The buyer completes the hosted page: session complete, PaymentIntent created.

        ``chosen_amount``: what the buyer typed for a Price with ``custom_unit_amount`` (the
        fake does not hold it to the minimum: Stripe would; fulfillment must too).

        ``amount_discount`` (a promotion code) lowers the total; ``amount_tax`` raises it, or is
        part of it when ``tax_inclusive`` (Stripe Tax's inclusive prices).

        ``payment_status="unpaid"`` models an asynchronous method (bank debit) still clearing.
        """
        with self._lock:
            session = self.sessions[session_id]
            if chosen_amount is not None:
                item = self.line_items[session_id][0]
                item["amount_subtotal"] = item["amount_total"] = chosen_amount
                session["amount_subtotal"] = chosen_amount
            total = max(0, (session["amount_subtotal"] or 0) - amount_discount)
            total += 0 if tax_inclusive else amount_tax
            pi_data = session["_payment_intent_data"]
            if session["status"] != "open":
                raise ValueError(f"session is {session['status']}")
            pi_id = new_id("pi").replace("_test_", "_")
            succeeded = payment_status == "paid"
            self.payment_intents[pi_id] = {
                "amount": total,
                "amount_capturable": 0,
                "amount_received": total if succeeded else 0,
                "capture_method": "automatic",
                "created": int(time.time()),
                "currency": session["currency"],
                "customer": None,
                "description": None,
                "id": pi_id,
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": session["livemode"],
                "metadata": dict(pi_data.get("metadata") or {}),
                "object": "payment_intent",
                "payment_method_types": ["card"],
                "receipt_email": None,
                "status": "succeeded" if succeeded else "processing",
            }
            session.update(
                status="complete",
                payment_status=payment_status,
                payment_intent=pi_id,
                amount_total=total,
                customer_details={
                    "address": None,
                    "email": email,
                    "name": None,
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
            )
            session["total_details"]["amount_discount"] = amount_discount
            session["total_details"]["amount_tax"] = amount_tax
            if succeeded:
                self._charge(pi_id)
            self._emit("checkout.session.completed", self._public(session))
            if succeeded:
                self._emit("payment_intent.succeeded", self.payment_intents[pi_id])
            return self._public(session)

    def settle(self, session_id: str) -> dict[str, Any]:
        """An asynchronous payment succeeds (``checkout.session.async_payment_succeeded``)."""
        with self._lock:
            session = self.sessions[session_id]
            session["payment_status"] = "paid"
            pi = self.payment_intents[session["payment_intent"]]
            pi.update(status="succeeded", amount_received=pi["amount"])
            self._charge(pi["id"])
            self._emit("checkout.session.async_payment_succeeded", self._public(session))
            self._emit("payment_intent.succeeded", pi)
            return self._public(session)

    def fail_async(self, session_id: str, message: str = "The bank debit was returned.") -> None:
        """An asynchronous payment fails (``checkout.session.async_payment_failed``): the session
        stays complete and unpaid, its PaymentIntent needs a new payment method."""
        with self._lock:
            pi = self.payment_intents[self.sessions[session_id]["payment_intent"]]
            pi.update(
                status="requires_payment_method",
                last_payment_error={"type": "card_error", "message": message},
            )
            self._emit("checkout.session.async_payment_failed", self.session(session_id))
            self._emit("payment_intent.payment_failed", pi)

    def expire(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            self.sessions[session_id]["status"] = "expired"
            self._emit("checkout.session.expired", self.session(session_id))
            return self._public(self.sessions[session_id])

    def _charge(self, pi_id: str) -> dict[str, Any]:
        pi = self.payment_intents[pi_id]
        charge_id = new_id("ch").replace("_test_", "_")
        charge = {
            "amount": pi["amount"],
            "amount_captured": pi["amount"],
            "amount_refunded": 0,
            "captured": True,
            "created": int(time.time()),
            "currency": pi["currency"],
            "disputed": False,
            "id": charge_id,
            "livemode": pi["livemode"],
            # A charge copies its PaymentIntent's metadata when it is created.
            "metadata": dict(pi["metadata"]),
            "object": "charge",
            "paid": True,
            "payment_intent": pi_id,
            "receipt_url": f"https://pay.stripe.com/receipts/payment/{charge_id}",
            "refunded": False,
            "refunds": self._list([], f"/v1/charges/{charge_id}/refunds"),
            "status": "succeeded",
        }
        self.charges[charge_id] = charge
        pi["latest_charge"] = charge_id
        return charge

    def payment_intent(self, session_id: str) -> dict[str, Any]:
        """The session's PaymentIntent as stored (``latest_charge`` an id): an event's object."""
        return copy.deepcopy(self.payment_intents[self.sessions[session_id]["payment_intent"]])

    def charge(self, session_id: str) -> dict[str, Any]:
        """The session's latest charge as stored: the object of ``charge.refunded``."""
        return copy.deepcopy(self.charges[self.payment_intent(session_id)["latest_charge"]])

    def refund(self, session_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund the session's charge, in full or ``amount`` of it; returns the charge."""
        with self._lock:
            charge = self.charges[self.payment_intent(session_id)["latest_charge"]]
            self._refund_charge(charge, amount)
            return copy.deepcopy(charge)

    def _refund_charge(
        self,
        charge: dict[str, Any],
        amount: int | None,
        reason: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A refund of ``charge`` (all that is left when ``amount`` is None), with the events
        Stripe sends for it; returns the refund. Raises ValueError beyond what is left."""
        left = charge["amount"] - charge["amount_refunded"]
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise ValueError(f"cannot refund {amount}; {left} left")
        refund = {
            "amount": amount,
            "balance_transaction": None,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "id": new_id("re").replace("_test_", "_"),
            "metadata": dict(metadata or {}),
            "object": "refund",
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "succeeded",
        }
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        charge["refunds"]["data"].insert(0, refund)
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge)
        return copy.deepcopy(refund)

    def _create_refund(self, params: dict[str, Any]) -> tuple[str, int, dict[str, str]]:
        """``POST /v1/refunds`` with ``payment_intent`` (and ``amount``, ``reason``,
        ``metadata``), answered as Stripe does, errors and their codes included."""
        pi = self.payment_intents.get(str(params.get("payment_intent")))
        if pi is None:
            return self._missing("payment_intent", str(params.get("payment_intent")))
        charge = self.charges.get(pi["latest_charge"] or "")
        if charge is None:
            return self._error(400, "invalid_request_error", "This PaymentIntent has no charge.")
        if params.get("reason") not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            return self._error(400, "invalid_request_error", "Invalid reason.", param="reason")
        if charge["disputed"]:
            return self._error(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                code="charge_disputed",
            )
        if charge["refunded"]:
            return self._error(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = int(params["amount"]) if params.get("amount") else None
        try:
            refund = self._refund_charge(
                charge, amount, params.get("reason"), params.get("metadata")
            )
        except ValueError:
            return self._error(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({charge['amount'] - charge['amount_refunded']})",
                code="amount_too_large",
                param="amount",
            )
        return self._ok(refund)

    def dispute(self, session_id: str, status: str = "needs_response") -> dict[str, Any]:
        """The buyer's bank disputes the session's charge; returns the dispute."""
        with self._lock:
            charge = self.charges[self.payment_intent(session_id)["latest_charge"]]
            charge["disputed"] = True
            dispute = {
                "amount": charge["amount"],
                "balance_transactions": [],
                "charge": charge["id"],
                "created": int(time.time()) + len(self.disputes),
                "currency": charge["currency"],
                "id": new_id("dp").replace("_test_", "_"),
                "is_charge_refundable": False,
                "livemode": charge["livemode"],
                "metadata": {},
                "object": "dispute",
                "payment_intent": charge["payment_intent"],
                "reason": "fraudulent",
                "status": status,
            }
            self.disputes[dispute["id"]] = dispute
            self._emit("charge.dispute.created", dispute)
            return copy.deepcopy(dispute)

    def close_dispute(self, session_id: str, status: str = "won") -> dict[str, Any]:
        """The session's latest dispute is decided: ``won`` or ``lost``; returns it."""
        with self._lock:
            pi_id = self.sessions[session_id]["payment_intent"]
            dispute = max(
                (d for d in self.disputes.values() if d["payment_intent"] == pi_id),
                key=lambda d: d["created"],
            )
            dispute["status"] = status
            self._emit("charge.dispute.closed", dispute)
            return copy.deepcopy(dispute)

    def tamper_line_item(
        self,
        session_id: str,
        *,
        unit_amount: int | None = None,
        currency: str | None = None,
        quantity: int | None = None,
        price_id: str | None = None,
        add_item: bool = False,
    ) -> None:
        """Change what the session sold, as a manipulated or misconfigured checkout would."""
        with self._lock:
            items = self.line_items[session_id]
            item = items[0]
            if add_item:
                extra = copy.deepcopy(item)
                extra["id"] = new_id("li").replace("_test_", "_")
                items.append(extra)
            price = item["price"]
            if unit_amount is not None:
                price["unit_amount"] = unit_amount
                price["unit_amount_decimal"] = str(unit_amount)
            if currency is not None:
                price["currency"] = item["currency"] = currency
            if price_id is not None:
                price["id"] = price_id
            if quantity is not None:
                item["quantity"] = quantity
            item["amount_subtotal"] = item["amount_total"] = price["unit_amount"] * item["quantity"]

    def set_down(self, down: bool = True, *, mode: str = "connection", after: int = 0) -> None:
        """Make every request fail: ``mode="connection"`` (refused) or ``"500"`` (server error);
        ``after``: answer that many more requests first."""
        self.down = mode if down else None
        self.down_after = after or None

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[FakeRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
        ]


def checkout_params(
    purchase: Any, *, installation: str | None = "tests", price_id: str | None = None
) -> dict[str, Any]:
    """Session params shaped like the checkout view's, for tests that start from a Purchase."""
    if price_id:
        line_item: dict[str, Any] = {"price": price_id, "quantity": 1}
    else:
        line_item = {
            "quantity": 1,
            "price_data": {
                "currency": purchase.currency.lower(),
                "unit_amount": purchase.amount,
                "product_data": {"name": purchase.product_title},
            },
        }
    metadata = {"wpd_purchase": str(purchase.public_id), "wpd_product": str(purchase.product_id)}
    if installation is not None:
        metadata["wpd_installation"] = installation
    return {
        "mode": "payment",
        "line_items": [line_item],
        "client_reference_id": str(purchase.public_id),
        "metadata": metadata,
        "payment_intent_data": {"metadata": dict(metadata)},
        "success_url": "http://testserver/shop/thanks/?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://testserver/",
    }


def start_checkout(fake: FakeStripe, purchase: Any, **kwargs: Any) -> str:
    """Open a session for ``purchase`` in ``fake`` and record its id on the purchase."""
    session = fake.create_session(json.loads(json.dumps(checkout_params(purchase, **kwargs))))
    purchase.stripe_checkout_session_id = session["id"]
    purchase.save(update_fields=["stripe_checkout_session_id"])
    return session["id"]
