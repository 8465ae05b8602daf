"""Signed webhook delivery, as Stripe does it: ``Stripe-Signature: t=<time>,v1=<HMAC-SHA256>``.

Delivery runs in a background thread after the Pay request's transaction commits: the sandbox
answers the webhook itself, and a dev server busy sending to itself must never wait on itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from django.db import close_old_connections, connection
from django.db.models import F

from .models import EmulatedEvent, EmulatedSession, new_id

logger = logging.getLogger(__name__)

#: Pauses before each retry; Stripe itself retries for days, a sandbox need not.
RETRY_DELAYS = (0.5, 2.0, 5.0)
#: Tests set this to False to deliver in the calling thread.
USE_THREAD = True


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def make_event(
    obj: Any, type_: str = "checkout.session.completed", created: int | None = None
) -> dict[str, Any]:
    """An event around ``obj`` (a session model or an object dict), as Stripe makes it.

    Events carry the object as stored: no expansions, no hosted-page url.
    """
    from wagtail_paid_delivery.stripe_api import API_VERSION

    data = obj.as_stripe() if isinstance(obj, EmulatedSession) else obj
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": {"object": data},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def event_payload(obj: Any, type_: str = "checkout.session.completed") -> bytes:
    """A signed-to-be webhook body around ``obj`` (see :func:`make_event`)."""
    return json.dumps(make_event(obj, type_)).encode()


def post(url: str, payload: bytes, signature: str) -> int:
    """POST the event; returns the HTTP status. Tests replace this."""
    request = urllib.request.Request(  # noqa: S310  (http(s) URL from settings)
        url,
        data=payload,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) sandbox-emulator",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver(session_id: str, url: str, secret: str, payloads: list[bytes] | None = None) -> None:
    """Deliver the events (default: ``checkout.session.completed``), in order, each retried."""
    try:
        if payloads is None:
            payloads = [event_payload(EmulatedSession.objects.get(pk=session_id))]
        results = []
        attempts = 0
        for payload in payloads:
            result = "not attempted"
            for delay in (0.0, *RETRY_DELAYS):
                time.sleep(delay)
                attempts += 1
                try:
                    status = post(url, payload, sign(payload, secret))
                except OSError as exc:
                    result = f"failed: {exc}"
                    continue
                ok = 200 <= status < 300
                result = f"delivered ({status})" if ok else f"failed: HTTP {status}"
                if ok:
                    break
            event = json.loads(payload)
            event_type = event.get("type", "?")
            results.append(f"{event_type} {result}")
            EmulatedEvent.objects.filter(pk=event.get("id")).update(delivery=result[:255])
            logger.info("Stripe emulator: %s for %s to %s: %s", event_type, session_id, url, result)
        EmulatedSession.objects.filter(pk=session_id).update(
            webhook_result="; ".join(results)[:255],
            webhook_attempts=F("webhook_attempts") + attempts,
        )
    except Exception:  # a background thread: log, never die silently
        logger.exception("Stripe emulator: webhook delivery for %s crashed", session_id)


def deliver_later(
    session_id: str, url: str, secret: str, payloads: list[bytes] | None = None
) -> None:
    if not USE_THREAD:
        deliver(session_id, url, secret, payloads)
        return

    def run() -> None:
        close_old_connections()
        try:
            deliver(session_id, url, secret, payloads)
        finally:
            connection.close()

    threading.Thread(target=run, name=f"stripe-emulator-{session_id[-6:]}", daemon=True).start()
