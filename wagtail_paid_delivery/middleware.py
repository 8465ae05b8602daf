"""The buyer's address behind a reverse proxy: ``REMOTE_ADDR`` from ``X-Forwarded-For``.

Behind nginx, every request reaches the app server from nginx's address, so the rate limits
(``limits.client_key``) would count every buyer as one client (on launch day, 30 checkouts per
ten minutes for the whole shop) and the download records would keep the proxy's address.
:class:`ClientAddressMiddleware` puts the client's address in ``REMOTE_ADDR`` for requests that
come from a proxy listed in ``TRUSTED_PROXIES``, and only for those: anyone else's
``X-Forwarded-For`` is ignored.

The client is the right-most address of ``X-Forwarded-For`` that is not a trusted proxy: each
proxy (nginx's ``$proxy_add_x_forwarded_for``) appends the address it saw, so addresses to the
left of it are whatever the client wrote, and a forged one never wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from django.http import HttpRequest, HttpResponse

from .conf import app_settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's ::ffff:a.b.c.d
    return address


def trusted(address: str, proxies: Sequence[Network]) -> bool:
    parsed = parse_address(address)
    return parsed is not None and any(parsed in network for network in proxies)


def client_address(remote_addr: str, forwarded_for: str, proxies: Sequence[Network]) -> str:
    """The client's address: ``remote_addr`` unless it is a trusted proxy, then the right-most
    address of ``forwarded_for`` that is not one (unchanged when there is none, or it is not an
    IP address: the proxy is then the best we know)."""
    if not proxies or not trusted(remote_addr, proxies):
        return remote_addr
    for entry in reversed(forwarded_for.split(",")):
        if trusted(entry, proxies):
            continue
        parsed = parse_address(entry)
        return str(parsed) if parsed is not None else remote_addr
    return remote_addr


class ClientAddressMiddleware:
    """Sets ``REMOTE_ADDR`` to the client's address behind the proxies in ``TRUSTED_PROXIES``.

    Put it first in ``MIDDLEWARE``, so everything after it sees the client.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        proxies = app_settings.trusted_proxies
        if proxies:
            request.META["REMOTE_ADDR"] = client_address(
                request.META.get("REMOTE_ADDR", ""),
                request.META.get("HTTP_X_FORWARDED_FOR", ""),
                proxies,
            )
        return self.get_response(request)
