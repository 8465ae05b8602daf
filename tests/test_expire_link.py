"""The sandbox's ``manage.py expire_link``: a purchase's live links end now, nothing else moves."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sandbox.home.management.commands.expire_link import Command
from tests.factories import PurchaseFactory
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink, Purchase

pytestmark = pytest.mark.django_db


def expire(*args: str) -> str:
    out = io.StringIO()
    call_command(Command(), *args, stdout=out)
    return out.getvalue()


def test_expire_link_ends_the_purchases_live_links_and_the_page_says_so(client, home):
    purchase = PurchaseFactory(paid=True)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    revoked = links.issue_link(purchase, reason=DownloadLink.Reason.RESEND).link
    revoked_at = timezone.now() - timedelta(hours=1)
    DownloadLink.objects.filter(pk=revoked.pk).update(revoked_at=revoked_at)
    other = links.issue_link(PurchaseFactory(paid=True), reason=DownloadLink.Reason.WEBHOOK).link
    assert client.get(f"/shop/d/{issued.token}/").status_code == 200

    # Typed as a buyer might quote it: lower case, a space for the hyphen.
    output = expire(purchase.order_number.lower().replace("-", " "))

    assert f"Order {purchase.order_number}: 1 live download link(s) expired now." in output
    issued.link.refresh_from_db()
    assert issued.link.expires_at <= timezone.now()
    revoked.refresh_from_db()
    assert revoked.revoked_at == revoked_at and revoked.expires_at > timezone.now()
    other.refresh_from_db()
    assert other.expires_at > timezone.now()
    assert Purchase.objects.get(pk=purchase.pk).status == Purchase.Status.PAID
    response = client.get(f"/shop/d/{issued.token}/")
    assert response.status_code == 410
    assert "Send me fresh links" in response.content.decode()


def test_expire_link_refuses_what_is_not_a_known_order_number(home):
    with pytest.raises(CommandError, match="is not an order number"):
        expire("not-a-number")
    with pytest.raises(CommandError, match="No purchase has the order number 22222-22222"):
        expire("22222-22222")
