"""Download links: issued with one raw token, stored hashed, checked in one query."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import timezone

from tests.factories import DownloadLinkFactory, ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink, Purchase

pytestmark = pytest.mark.django_db


def test_issue_link_stores_only_the_hash_and_builds_an_absolute_url(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    assert len(issued.token) == 43
    assert issued.link.token_hash == hashlib.sha256(issued.token.encode()).hexdigest()
    assert issued.url == f"http://testserver/shop/d/{issued.token}/"
    stored = DownloadLink.objects.get(pk=issued.link.pk)
    assert issued.token not in {stored.token_hash, str(stored.__dict__)}
    assert stored.reason == "webhook"


def test_two_links_never_share_a_token(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    a = links.issue_link(purchase, reason="webhook")
    b = links.issue_link(purchase, reason="resend")
    assert a.token != b.token and a.link.token_hash != b.link.token_hash


@override_settings(WAGTAIL_PAID_DELIVERY={"LINK_LIFETIME": timedelta(hours=3), "DOWNLOAD_LIMIT": 2})
def test_issue_link_uses_site_defaults(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    now = timezone.now()
    link = links.issue_link(purchase, reason="webhook", now=now).link
    assert link.expires_at == now + timedelta(hours=3)
    assert link.download_limit == 2


@override_settings(WAGTAIL_PAID_DELIVERY={"DOWNLOAD_LIMIT": None})
def test_site_default_may_be_unlimited(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    assert links.issue_link(purchase, reason="webhook").link.download_limit is None


def test_issue_link_uses_product_overrides(home):
    product = ProductPageFactory(parent=home, link_lifetime_hours=72, download_limit=9)
    purchase = PurchaseFactory(paid=True, product=product)
    now = timezone.now()
    link = links.issue_link(purchase, reason="admin", now=now).link
    assert link.expires_at == now + timedelta(hours=72)
    assert link.download_limit == 9


def test_product_limit_zero_means_unlimited(home):
    product = ProductPageFactory(parent=home, download_limit=0)
    purchase = PurchaseFactory(paid=True, product=product)
    assert links.issue_link(purchase, reason="admin").link.download_limit is None


@pytest.mark.parametrize(
    "status", ["pending", "failed", "expired", "refunded", "disputed", "revoked"]
)
def test_purchase_that_is_not_paid_gets_no_link(home, status):
    purchase = PurchaseFactory(status=status, product=ProductPageFactory(parent=home))
    with pytest.raises(links.CannotIssueLink):
        links.issue_link(purchase, reason="webhook")
    assert not DownloadLink.objects.exists()


def test_check_token_is_one_indexed_query(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    issued = links.issue_link(purchase, reason="webhook")
    with CaptureQueriesContext(connection) as queries:
        link = links.check_token(issued.token)
        assert link.purchase.status == "paid"  # select_related: no second query
    assert len(queries) == 1
    assert "token_hash" in queries[0]["sql"]


@pytest.mark.parametrize(
    "raw",
    ["", "short", "x" * 43, "x" * 44, "../../etc/passwd", "a" * 42 + "/", "a" * 42 + "%"],
)
def test_unknown_and_malformed_tokens_are_invalid(raw):
    DownloadLinkFactory()
    with pytest.raises(links.InvalidToken) as error:
        links.check_token(raw)
    assert error.value.status_code == 404


def test_refusal_reasons(home):
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    issued = links.issue_link(purchase, reason="webhook")

    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    with pytest.raises(links.LinkExpired) as error:
        links.check_token(issued.token)
    assert (error.value.status_code, error.value.reason) == (410, "expired")

    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=timezone.now() + timedelta(hours=1)
    )
    Purchase.objects.filter(pk=purchase.pk).update(status="disputed")
    with pytest.raises(links.PurchaseNotPaid):
        links.check_token(issued.token)
    Purchase.objects.filter(pk=purchase.pk).update(status="paid")
    assert links.check_token(issued.token).pk == issued.link.pk  # a won dispute: works again

    Purchase.objects.filter(pk=purchase.pk).update(status="refunded")
    with pytest.raises(links.LinkRevoked):
        links.check_token(issued.token)
    Purchase.objects.filter(pk=purchase.pk).update(status="paid")

    links.revoke_link(issued.link)
    first = issued.link.revoked_at
    links.revoke_link(issued.link)
    assert issued.link.revoked_at == first
    with pytest.raises(links.LinkRevoked) as error:
        links.check_token(issued.token)
    assert error.value.status_code == 410


def test_revoked_wins_over_expired(home):
    link = DownloadLinkFactory(
        expires_at=timezone.now() - timedelta(days=1), revoked_at=timezone.now()
    )
    with pytest.raises(links.LinkRevoked):
        links.check_link(link)
