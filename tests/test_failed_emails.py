"""Failed emails in the shop desk, through the admin's URLs: the listing (only emails that failed
or are retrying; filters for kind, status and date; last error, attempts, next attempt), the
inspect view, "send again" (confirmed, permissioned like the desk's support actions, logged)
and who may see what."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from wagtail.models import ModelLogEntry

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.test_shop_desk import assert_refused, desk_user
from wagtail_paid_delivery import desk, outbox, tasks
from wagtail_paid_delivery.models import DownloadLink, OutboundEmail

pytestmark = pytest.mark.django_db

M = OutboundEmail.Status
NS = "wagtail_paid_delivery_emails"
DOWN = "tests.mail_backends.DownBackend"


def url(name: str, *args) -> str:
    return reverse(f"{NS}:{name}", args=args)


def listed(response) -> list[int]:
    """The emails listed, in order (the title column links to each one's inspect view)."""
    return [int(pk) for pk in re.findall(r'href="/admin/shop/emails/(\d+)/"', response.text)]


def email(purchase, **fields) -> OutboundEmail:
    return OutboundEmail.objects.create(
        purchase=purchase,
        to=purchase.email,
        message_id=outbox.new_message_id(),
        **{"kind": OutboundEmail.Kind.DESK, **fields},
    )


@pytest.fixture
def outbox_rows(home):
    product = ProductPageFactory(parent=home, title="Field Guide")
    ada = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    now = timezone.now()
    return {
        "failed": email(
            ada,
            kind=OutboundEmail.Kind.DELIVERY,
            status=M.FAILED,
            attempts=8,
            last_error="SMTPAuthenticationError: 535 bad credentials",
            last_attempt_at=now - timedelta(hours=1),
            created_at=now - timedelta(days=3),
        ),
        "retrying": email(
            ada,
            status=M.PENDING,
            attempts=2,
            last_error="SMTPServerDisconnected: Connection unexpectedly closed",
            next_attempt_at=now + timedelta(minutes=4),
            last_attempt_at=now,
            created_at=now - timedelta(hours=2),
        ),
        "sent": email(ada, status=M.SENT, attempts=1, sent_at=now),
        "waiting": email(ada, status=M.PENDING, attempts=0),
        "cancelled": email(ada, status=M.CANCELLED, last_error="purchase refunded"),
    }


def test_listing_shows_emails_that_failed_or_are_retrying_with_why_and_when(
    admin_client, outbox_rows
):
    response = admin_client.get(url("index"))
    assert response.status_code == 200
    assert listed(response) == [outbox_rows["retrying"].pk, outbox_rows["failed"].pk]
    html = response.text
    for text in (
        "Failed emails",
        "failed",
        "retrying",
        "SMTPAuthenticationError: 535 bad credentials",
        "SMTPServerDisconnected",
        "none: send it again",
        "Delivery email",
        "ada@example.com",
    ):
        assert text in html, text
    assert re.search(r"<td[^>]*>\s*8\s*</td>", html)  # the failed email's attempts
    # In the Shop menu, next to the Stripe events.
    assert url("index") in admin_client.get(reverse("wagtailadmin_home")).text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"state": "failed"}, ["failed"]),
        ({"state": "retrying"}, ["retrying"]),
        ({"kind": "delivery"}, ["failed"]),
        ({"kind": "desk"}, ["retrying"]),
        ({"kind": "resend"}, []),
        ({"q": "bad credentials"}, ["failed"]),
        ({"ordering": "attempts"}, ["retrying", "failed"]),
        ({"ordering": "-attempts"}, ["failed", "retrying"]),
    ],
)
def test_listing_filters(admin_client, outbox_rows, query, expected):
    response = admin_client.get(url("index"), query)
    assert listed(response) == [outbox_rows[name].pk for name in expected]


def test_listing_filters_by_date(admin_client, outbox_rows):
    today = timezone.localdate()
    recent = {"created_at_from": (today - timedelta(days=1)).isoformat()}
    assert listed(admin_client.get(url("index"), recent)) == [outbox_rows["retrying"].pk]
    old = {"created_at_to": (today - timedelta(days=2)).isoformat()}
    assert listed(admin_client.get(url("index"), old)) == [outbox_rows["failed"].pk]


def test_listing_survives_nonsense_in_its_query(admin_client, outbox_rows):
    for query in ({"state": "x"}, {"kind": "<script>"}, {"created_at_from": "yesterday"}):
        assert admin_client.get(url("index"), query).status_code == 200


def test_inspect_view_shows_the_whole_error_and_the_purchase(admin_client, outbox_rows):
    failed = outbox_rows["failed"]
    response = admin_client.get(url("inspect", failed.pk))
    html = response.text
    assert response.status_code == 200
    assert "Every attempt to send this email failed" in html
    assert "SMTPAuthenticationError: 535 bad credentials" in html
    assert reverse("wagtail_paid_delivery_purchases:inspect", args=[failed.purchase_id]) in html
    assert url("send_again", failed.pk) in html
    retrying = admin_client.get(url("inspect", outbox_rows["retrying"].pk)).text
    assert "tried again automatically" in retrying
    assert url("send_again", outbox_rows["retrying"].pk) not in retrying
    assert "Only an email whose every attempt failed is sent again" in retrying


@pytest.fixture
def failed_delivery(home, settings):
    """A paid purchase whose delivery email failed for good (the mail server refused it)."""
    settings.WAGTAIL_PAID_DELIVERY = {**SETTINGS, "MAX_EMAIL_ATTEMPTS": 1}
    settings.EMAIL_BACKEND = DOWN
    product = ProductPageFactory(parent=home, title="Field Guide")
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    outbox.promise_delivery(purchase)
    assert tasks.send_delivery_email(purchase.pk) == "failed for good after 1 attempts"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return OutboundEmail.objects.get(purchase=purchase, status=M.FAILED)


def test_send_again_is_confirmed_logged_and_the_email_goes(
    admin_client, admin_user, failed_delivery, django_capture_on_commit_callbacks
):
    confirm = admin_client.get(url("send_again", failed_delivery.pk))
    assert confirm.status_code == 200
    assert "fresh set of attempts" in confirm.text and "Yes, send it again" in confirm.text
    assert 'name="csrfmiddlewaretoken"' in confirm.text
    assert mail.outbox == []

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url("send_again", failed_delivery.pk))
    assert response.status_code == 302
    assert response["Location"] == url("inspect", failed_delivery.pk)
    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.attempts) == (M.SENT, 1)
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    assert DownloadLink.objects.filter(purchase=failed_delivery.purchase, revoked_at=None).exists()

    entry = ModelLogEntry.objects.get(action=desk.SEND_EMAIL_AGAIN)
    assert entry.user == admin_user and entry.data["attempts"] == 1
    assert "ada@example.com" not in str(entry.data) + entry.label
    history = admin_client.get(reverse("wagtailadmin_reports:site_history")).text
    assert "Email queued again (it had failed after 1 attempts)" in history
    assert url("inspect", failed_delivery.pk) in history
    # Sent now: no longer listed, and sending again is refused.
    assert listed(admin_client.get(url("index"))) == []
    again = admin_client.post(url("send_again", failed_delivery.pk), follow=True)
    assert "Only an email whose every attempt failed is sent again" in again.text
    assert len(mail.outbox) == 1
    assert ModelLogEntry.objects.filter(action=desk.SEND_EMAIL_AGAIN).count() == 1


def test_send_again_while_the_mail_server_is_still_down_fails_again_and_stays_listed(
    admin_client, failed_delivery, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = DOWN
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url("send_again", failed_delivery.pk))
    failed_delivery.refresh_from_db()
    assert (failed_delivery.status, failed_delivery.attempts) == (M.FAILED, 1)
    assert listed(admin_client.get(url("index"))) == [failed_delivery.pk]


def test_who_may_see_and_send_again(client, outbox_rows, failed_delivery):
    failed = outbox_rows["failed"]
    paths = [url("index"), url("inspect", failed.pk), url("send_again", failed.pk)]
    # No desk permission, or only the events': no Shop menu entry, every URL refused.
    for codenames in [(), ("view_stripeevent",)]:
        client.force_login(desk_user(*codenames, username=f"u{len(codenames)}"))
        for path in paths:
            assert_refused(client, path)
        assert_refused(client, url("send_again", failed.pk), "post")
        assert url("index") not in client.get(reverse("wagtailadmin_home")).text

    # View: lists and inspects, cannot send again.
    client.force_login(desk_user("view_purchase", username="viewer"))
    assert client.get(url("index")).status_code == 200
    assert url("send_again", failed.pk) not in client.get(url("inspect", failed.pk)).text
    assert_refused(client, url("send_again", failed.pk))
    assert_refused(client, url("send_again", failed_delivery.pk), "post")
    # Support without view: refused too.
    client.force_login(desk_user("support_purchase", username="helper"))
    assert_refused(client, url("send_again", failed.pk))
    failed_delivery.refresh_from_db()
    assert failed_delivery.status == M.FAILED

    # View and support (the desk's support actions): sends again.
    client.force_login(desk_user("view_purchase", "support_purchase", username="support"))
    assert url("send_again", failed.pk) in client.get(url("inspect", failed.pk)).text
    assert client.post(url("send_again", failed_delivery.pk)).status_code == 302
    failed_delivery.refresh_from_db()
    assert failed_delivery.status in (M.PENDING, M.SENT)


def test_the_groups_page_shows_no_permissions_of_their_own(admin_client):
    page = admin_client.get(reverse("wagtailusers_groups:add")).text
    assert "outbound email" not in page.lower()


def test_email_text_is_escaped(admin_client, home):
    purchase = PurchaseFactory(
        paid=True, product=ProductPageFactory(parent=home), email="x@example.com"
    )
    row = email(purchase, status=M.FAILED, attempts=1, last_error="<script>alert(1)</script>")
    assert "<script>alert(1)" not in admin_client.get(url("index")).text
    assert "<script>alert(1)" not in admin_client.get(url("inspect", row.pk)).text


def test_the_dashboards_email_warnings_link_to_the_listing(admin_client, outbox_rows):
    from tests.test_event_inbox import dashboard, panel

    html = panel(dashboard(admin_client))
    assert "1 email to a buyer failed every attempt" in html
    assert f'href="{url("index")}?state=failed"' in html
    assert f'href="{url("index")}?state=retrying"' in html
