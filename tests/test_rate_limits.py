"""Checkout is rate limited per client, through the same limiter (and cache) as resend."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse

from tests.factories import ProductPageFactory
from wagtail_paid_delivery.models import Purchase

pytestmark = pytest.mark.django_db

ORIGIN = "http://testserver"
SMALL_LIMIT = {**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_RATE_LIMIT": (3, 600)}


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


def buy(product, address="203.0.113.5", client=None, **headers):
    """One Buy click from a fresh browser (no binding cookie, so nothing is reused)."""
    headers.setdefault("HTTP_ORIGIN", ORIGIN)
    client = client or Client()
    url = reverse("wagtail_paid_delivery:checkout", args=[product.pk])
    return client.post(url, REMOTE_ADDR=address, **headers)


def session_posts(fake_stripe) -> int:
    return len(fake_stripe.calls("post", "/v1/checkout/sessions"))


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_past_the_limit_a_429_page_says_when_to_come_back_and_nothing_is_made(product, fake_stripe):
    assert [buy(product).status_code for _ in range(3)] == [303, 303, 303]
    assert (Purchase.objects.count(), session_posts(fake_stripe)) == (3, 3)

    response = buy(product)

    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= 600
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    assert "Please wait a moment" in html
    assert "Nothing was charged" in html
    minutes = re.search(r"try again in (a minute|(\d+) minutes)", html)
    assert minutes is not None
    assert int(minutes.group(2) or 1) == -(-retry_after // 60)
    assert f'href="{product.url}"' in html and "Back to Field guide" in html
    assert 'href="/static/wagtail_paid_delivery/paid-delivery.css"' in html  # the app's style
    # No purchase, no Stripe call.
    assert (Purchase.objects.count(), session_posts(fake_stripe)) == (3, 3)
    # Still refused on the next click (the window has not turned).
    assert buy(product).status_code == 429


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_other_clients_are_not_affected(product, fake_stripe):
    for _ in range(4):
        buy(product, "203.0.113.5")
    assert buy(product, "203.0.113.5").status_code == 429
    assert buy(product, "203.0.113.6").status_code == 303
    assert buy(product, "2001:db8:1:2::1").status_code == 303


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_an_ipv6_client_is_its_slash_64(product, fake_stripe):
    # One subscriber's /64: every address in it counts as one client.
    same_subscriber = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"]
    assert [buy(product, a).status_code for a in same_subscriber] == [303, 303, 303]
    assert buy(product, "2001:db8:1:2:abcd::9").status_code == 429
    assert buy(product, "2001:DB8:1:2::0001").status_code == 429  # another spelling, same /64
    # The next /64 is another client.
    assert buy(product, "2001:db8:1:3::1").status_code == 303


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_ipv4_clients_on_a_dual_stack_socket_are_each_their_own_address(product, fake_stripe):
    # A server listening on [::] sees IPv4 clients as ::ffff:a.b.c.d: each is still itself,
    # the same client as its plain IPv4 spelling, not one big "::/64".
    assert [buy(product, "::ffff:203.0.113.5").status_code for _ in range(3)] == [303] * 3
    assert buy(product, "203.0.113.5").status_code == 429
    assert buy(product, "::ffff:203.0.113.6").status_code == 303
    assert buy(product, "::ffff:198.51.100.1").status_code == 303


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_forwarded_headers_do_not_make_a_new_client(product, fake_stripe):
    # Only REMOTE_ADDR counts (the proxy sets it); headers a client writes itself do not.
    for n in range(3):
        assert buy(product, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}").status_code == 303
    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED"):
        assert buy(product, **{header: "198.51.100.99"}).status_code == 429


@override_settings(WAGTAIL_PAID_DELIVERY=SMALL_LIMIT)
def test_a_double_click_counts_and_refused_origins_do_not(product, fake_stripe):
    browser = Client()
    for _ in range(5):
        # Another site cannot use up a buyer's clicks: refused before counting.
        assert buy(product, client=browser, HTTP_ORIGIN="https://evil.example").status_code == 403
    assert [buy(product, client=browser).status_code for _ in range(3)] == [303, 303, 303]
    # The same browser's clicks reused one purchase, and counted all the same.
    assert Purchase.objects.count() == 1
    assert buy(product, client=browser).status_code == 429


def test_the_default_limit_is_far_above_a_shopper(product, fake_stripe):
    # Thirty clicks in a row (a shopper clicks once or twice, comes back, clicks again) pass.
    browser = Client()
    assert {buy(product, client=browser).status_code for _ in range(30)} == {303}
    # A script's thirty-first is refused.
    assert buy(product, client=browser).status_code == 429


@override_settings(WAGTAIL_PAID_DELIVERY={**SMALL_LIMIT, "RESEND_RATE_LIMIT": (2, 600)})
def test_one_limiter_for_checkout_and_resend_each_with_its_own_count(product, fake_stripe):
    resend = reverse("wagtail_paid_delivery:resend")
    client = Client(REMOTE_ADDR="203.0.113.5")
    for _ in range(3):
        buy(product)
    assert buy(product).status_code == 429
    # Resend counts for itself, in the same cache: two accepted, then 429.
    answers = [client.post(resend, {"email": "a@example.com"}).status_code for _ in range(3)]
    assert answers == [200, 200, 429]


@override_settings(
    WAGTAIL_PAID_DELIVERY={**SMALL_LIMIT, "CHECKOUT_RATE_LIMIT": None},
)
def test_no_limit_when_set_to_none(product, fake_stripe):
    assert {buy(product).status_code for _ in range(6)} == {303}


# When the cache cannot count --------------------------------------------------------------

#: A Redis nobody listens on (loopback, a closed port): every cache call fails at once.
UNREACHABLE = {
    **settings.CACHES,
    "rate_limits": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:9/0",
    },
}


@override_settings(CACHES=UNREACHABLE)
def test_an_unreachable_cache_refuses_by_default(product, fake_stripe, caplog):
    response = buy(product)
    assert response.status_code == 429
    assert response["Retry-After"] == "600"
    assert Purchase.objects.count() == 0
    assert "cache 'rate_limits' failed" in caplog.text


@override_settings(CACHES=UNREACHABLE, RATELIMIT_FAIL_OPEN=True)
def test_an_unreachable_cache_lets_buyers_through_with_fail_open(product, fake_stripe):
    assert buy(product).status_code == 303
    assert Purchase.objects.count() == 1


# Parallel requests at the limit, in a shared cache ------------------------------------------


def redis_url() -> str:
    """The test Redis (CI starts one on 127.0.0.1:6379); skip without it, or fail in CI."""
    import socket

    from tests.conftest import REQUIRE_SYSTEM_DEPS

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        if REQUIRE_SYSTEM_DEPS:
            pytest.fail("Redis is not answering on 127.0.0.1:6379 (WPD_REQUIRE_SYSTEM_DEPS=1)")
        pytest.skip("Redis is not answering on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/13"


def test_parallel_requests_at_the_limit_pass_only_as_many_as_allowed(rf):
    import functools
    import uuid

    from tests.concurrency import run_at_once
    from wagtail_paid_delivery import limits

    shared = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_url(),
        "KEY_PREFIX": f"wpd-tests-{uuid.uuid4().hex}",  # this run's own keys
    }
    with override_settings(CACHES={**settings.CACHES, "rate_limits": shared}):
        requests = [rf.post("/shop/checkout/1/", REMOTE_ADDR="203.0.113.9") for _ in range(24)]
        calls = [
            functools.partial(limits.hit, request, "checkout", "203.0.113.9", (5, 600))
            for request in requests
        ]
        waits = run_at_once(calls)
        assert sum(wait is None for wait in waits) == 5
        assert all(1 <= wait <= 600 for wait in waits if wait is not None)
    # (The keys expire with their window; clear() would flush the whole Redis database.)
