"""Rate limits for buyer-facing requests: one limiter for checkout and resend.

The counting is django-ratelimit's (``get_usage``, the function behind its ``is_ratelimited``):
a fixed window per key, offset per key so windows do not all turn at once, counted with the
cache's atomic ``add``/``incr``. Its Django app is not installed (its system check refuses
every cache but Memcached and django-redis); ``checks.py`` checks the cache instead.

django-ratelimit takes its cache from Django's ``RATELIMIT_USE_CACHE`` setting and has no
per-call choice, so that setting is where these limits count too (``conf.rate_limit_cache``):
one limiter, one cache, also for a site that uses django-ratelimit itself. A cache every app
process shares is required for the numbers to mean anything (W004, W005).

Who "a client" is: :func:`client_key`. Cache keys are SHA-256 digests of the group, the
window and the identity, so the cache never holds an address, IP or email, in the clear.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from django.http import HttpRequest
from django_ratelimit.core import get_usage

from .conf import app_settings

logger = logging.getLogger(__name__)

#: Prefix of every limit's group: django-ratelimit keys are per group, so ours never collide
#: with a site's own limits in the same cache.
GROUP_PREFIX = "wagtail_paid_delivery"


def client_key(request: HttpRequest) -> str:
    """The client a limit counts for: its IPv4 address, or its IPv6 /64 (one subscriber).

    Read from ``REMOTE_ADDR``: behind a proxy, the proxy must set it to the client's address
    (nginx ``real_ip``, Apache ``mod_remoteip``, or a trusted middleware); otherwise every buyer
    is the proxy, and shares one limit.
    """
    address = (request.META.get("REMOTE_ADDR") or "").strip()
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d; their /64 would be "::",
        # one limit for every IPv4 client in the world.
        ip = ip.ipv4_mapped
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)
    return str(ip)


def hit(request: HttpRequest, kind: str, identity: str, limit: Any) -> int | None:
    """Count one request of ``kind`` for ``identity``; over ``limit``, the seconds to wait.

    ``limit`` is ``(requests, seconds)``, or None for no limit. Returns None while the request
    is allowed, else a ``Retry-After`` value: the seconds until this identity's window turns.
    When the cache cannot count, django-ratelimit's ``RATELIMIT_FAIL_OPEN`` decides: refused
    (its default), or let through.
    """
    if not limit:
        return None
    allowed, seconds = int(limit[0]), int(limit[1])
    try:
        usage = get_usage(
            request,
            group=f"{GROUP_PREFIX}.{kind}",
            key=lambda group, request: identity,
            rate=(allowed, seconds),
            increment=True,
        )
    except Exception:
        # A cache backend raises its own errors (a Redis or Memcached connection refused).
        logger.exception("Rate limit %s: cache %r failed.", kind, app_settings.rate_limit_cache)
        return None if app_settings.rate_limit_fail_open else seconds
    if usage is None or not usage["should_limit"]:
        return None  # no limit, RATELIMIT_ENABLE off, or under it
    left = int(usage["time_left"])
    if left < 0:
        # django-ratelimit's answer when the cache returned nothing to count (unreachable).
        logger.error("Rate limit %s: cache %r did not count.", kind, app_settings.rate_limit_cache)
        return seconds
    # The window turns one second after time_left reaches 0.
    return min(left + 1, seconds)
