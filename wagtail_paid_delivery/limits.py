"""Rate limits for buyer-facing forms, counted in Django's cache (``RESEND_CACHE``)."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest

from .conf import app_settings


def client_key(request: HttpRequest) -> str:
    """The client a limit counts for: its IPv4 address, or its IPv6 /64 (one subscriber)."""
    address = (request.META.get("REMOTE_ADDR") or "").strip()
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)
    return str(ip)


def over_limit(kind: str, identity: str, limit: Any) -> bool:
    """Count one request for ``identity`` in a fixed window; True when over ``limit``.

    ``limit`` is ``(requests, seconds)`` or None (no limit). The identity is hashed, so the
    cache never holds an email address.
    """
    if not limit:
        return False
    allowed, seconds = int(limit[0]), int(limit[1])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    key = f"wagtail_paid_delivery:resend:{kind}:{digest}"
    cache = caches[app_settings.RESEND_CACHE]
    cache.add(key, 0, timeout=seconds)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=seconds)
        count = 1
    return count > allowed
