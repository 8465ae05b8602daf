"""The buyer's address behind a reverse proxy (``middleware.ClientAddressMiddleware``).

Only a request from a proxy in ``TRUSTED_PROXIES`` has its ``X-Forwarded-For`` believed, and
then only its right-most address that is not a proxy (the one the proxy appended): what a client
writes there itself never becomes its address. tests/test_multiserver.py shows it through a real
nginx.
"""

from __future__ import annotations

import ipaddress

import pytest
from django.test import RequestFactory

from wagtail_paid_delivery import limits
from wagtail_paid_delivery.middleware import ClientAddressMiddleware, client_address

NGINX = [ipaddress.ip_network("10.0.0.10/32"), ipaddress.ip_network("127.0.0.0/8")]


@pytest.mark.parametrize(
    ("remote", "forwarded", "client"),
    [
        # nginx appended the buyer's address.
        ("10.0.0.10", "198.51.100.7", "198.51.100.7"),
        # The buyer wrote an address of their own first: nginx's entry (the last) wins.
        ("10.0.0.10", "203.0.113.9, 198.51.100.7", "198.51.100.7"),
        # Two proxies of ours (a load balancer, then nginx): skip both.
        ("10.0.0.10", "203.0.113.9, 198.51.100.7, 127.0.0.1", "198.51.100.7"),
        # IPv6 and a dual-stack socket's IPv4-mapped form.
        ("10.0.0.10", "2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.10", "198.51.100.7", "198.51.100.7"),
        # Not from a proxy of ours: its header is ignored, whatever it says.
        ("198.51.100.7", "10.0.0.99", "198.51.100.7"),
        ("192.0.2.1", "", "192.0.2.1"),
        # From a proxy, but nothing (or nothing usable) after it: the proxy is all we know.
        ("10.0.0.10", "", "10.0.0.10"),
        ("10.0.0.10", "127.0.0.1", "10.0.0.10"),
        ("10.0.0.10", "198.51.100.7, not-an-address", "10.0.0.10"),
        ("10.0.0.10", "198.51.100.7:4431", "10.0.0.10"),
    ],
)
def test_client_address(remote, forwarded, client):
    assert client_address(remote, forwarded, NGINX) == client


def test_no_trusted_proxies_changes_nothing():
    assert client_address("10.0.0.10", "198.51.100.7", []) == "10.0.0.10"


def through_middleware(remote: str, forwarded: str | None = None) -> str:
    seen: dict[str, str] = {}

    def view(request):
        seen["remote"] = request.META["REMOTE_ADDR"]
        seen["client"] = limits.client_key(request)
        return None

    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    request = RequestFactory().get("/", REMOTE_ADDR=remote, **headers)
    ClientAddressMiddleware(view)(request)
    assert seen["client"] == seen["remote"]  # the rate limits count this address
    return seen["remote"]


def test_middleware_sets_remote_addr_for_trusted_proxies_only(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "TRUSTED_PROXIES": ["10.0.0.10", "127.0.0.0/8"],
    }
    assert through_middleware("10.0.0.10", "203.0.113.9, 198.51.100.7") == "198.51.100.7"
    assert through_middleware("198.51.100.50", "198.51.100.7") == "198.51.100.50"
    assert through_middleware("10.0.0.10") == "10.0.0.10"


def test_middleware_without_trusted_proxies_leaves_remote_addr(settings):
    assert through_middleware("10.0.0.10", "198.51.100.7") == "10.0.0.10"
