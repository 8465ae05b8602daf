"""The event inbox and the dashboard panel in the Wagtail admin, through their URLs: the Stripe
events listing (filters, failed and retrying ones visible), the inspect view (payload escaped),
the "reprocess" action (confirm, POST, log entry, effect), the shop's dashboard panel (numbers,
warnings, the cluster's heartbeat) and who may do what."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from wagtail.models import ModelLogEntry

from tests.factories import (
    DownloadEventFactory,
    DownloadLinkFactory,
    ProductPageFactory,
    PurchaseFactory,
    StripeEventFactory,
)
from tests.stripe_fake import event_for, start_checkout
from tests.test_shop_desk import assert_refused, desk_user
from wagtail_paid_delivery import desk, heartbeat, tasks
from wagtail_paid_delivery.models import ClusterHeartbeat, Purchase, StripeEvent

pytestmark = pytest.mark.django_db

E = StripeEvent.Status
NS = "wagtail_paid_delivery_events"


def url(name: str, *args) -> str:
    return reverse(f"{NS}:{name}", args=args)


def listed(response) -> list[str]:
    """The event types listed, in order (each links to its inspect view)."""
    html = response.content.decode()
    return re.findall(r'<a href="/admin/shop/events/\d+/"[^>]*>\s*([^<]+?)\s*</a>', html)


@pytest.fixture
def inbox(home):
    """Four events: processed (with its purchase), ignored, retrying, failed for good."""
    now = timezone.now()
    bought = PurchaseFactory(paid=True, email="ada@example.com")
    return {
        "processed": StripeEventFactory(
            type="checkout.session.completed",
            status=E.PROCESSED,
            attempts=1,
            purchase=bought,
            received_at=now - timedelta(days=3),
            livemode=True,
        ),
        "ignored": StripeEventFactory(
            type="customer.created",
            status=E.IGNORED,
            last_error="unhandled event type 'customer.created'",
            received_at=now - timedelta(days=2),
        ),
        "retrying": StripeEventFactory(
            type="charge.refunded",
            status=E.FAILED,
            attempts=2,
            next_attempt_at=now + timedelta(minutes=4),
            last_error="StripeUnavailable: Stripe did not answer",
            received_at=now - timedelta(hours=1),
        ),
        "stuck": StripeEventFactory(
            type="payment_intent.succeeded",
            status=E.FAILED,
            attempts=8,
            last_error="StripeUnavailable: gave up after 8 attempts",
            received_at=now,
        ),
    }


# Listing ------------------------------------------------------------------------------------


def test_listing_shows_events_newest_first_and_failures_say_why(admin_client, inbox):
    response = admin_client.get(url("index"))
    assert response.status_code == 200
    assert listed(response) == [
        "payment_intent.succeeded",
        "charge.refunded",
        "customer.created",
        "checkout.session.completed",
    ]
    html = response.content.decode()
    assert "failed: needs reprocessing" in html
    assert "failed: retrying" in html
    assert "wpd-status--error" in html
    assert "gave up after 8 attempts" in html
    assert "Stripe did not answer" in html
    # The processed event links to its purchase.
    purchase = inbox["processed"].purchase
    assert f'href="/admin/shop/purchases/{purchase.pk}/"' in html
    # Read-only: no add, edit or delete.
    assert admin_client.get("/admin/shop/events/new/").status_code == 404
    assert admin_client.get(f"/admin/shop/events/edit/{purchase.pk}/").status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"type": "charge.refunded"}, ["charge.refunded"]),
        ({"status": "failed"}, ["payment_intent.succeeded", "charge.refunded"]),
        ({"status": ["ignored", "processed"]}, ["customer.created", "checkout.session.completed"]),
        ({"retrying": "stuck"}, ["payment_intent.succeeded"]),
        ({"retrying": "retrying"}, ["charge.refunded"]),
        ({"mode": "live"}, ["checkout.session.completed"]),
        ({"q": "customer"}, ["customer.created"]),
    ],
)
def test_listing_filters(admin_client, inbox, query, expected):
    assert listed(admin_client.get(url("index"), query)) == expected


def test_listing_filters_by_date(admin_client, inbox):
    today = timezone.localdate()
    query = {
        "received_at_from": (today - timedelta(days=2)).isoformat(),
        "received_at_to": (today - timedelta(days=1)).isoformat(),
    }
    assert listed(admin_client.get(url("index"), query)) == ["customer.created"]


# Inspect ------------------------------------------------------------------------------------


def test_inspect_shows_the_payload_pretty_printed_and_escaped(admin_client, home):
    event = StripeEventFactory(
        status=E.FAILED,
        attempts=3,
        last_error="ValueError: <img src=x onerror=alert(2)>",
        payload={
            "id": "evt_1",
            "type": "checkout.session.completed",
            "data": {"object": {"metadata": {"note": "</pre><script>alert(1)</script>"}}},
        },
    )
    response = admin_client.get(url("inspect", event.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    # Indented, one key a line: readable.
    assert "\n  &quot;data&quot;: {\n    &quot;object&quot;: {" in html
    assert "will not be retried automatically" in html
    assert url("reprocess", event.pk) in html


def test_inspect_links_to_the_purchase_for_editors_who_may_see_it(client, inbox):
    event = inbox["processed"]
    purchase_url = reverse("wagtail_paid_delivery_purchases:inspect", args=[event.purchase_id])
    client.force_login(desk_user("view_stripeevent", "view_purchase", username="both"))
    assert purchase_url in client.get(url("inspect", event.pk)).content.decode()
    client.force_login(desk_user("view_stripeevent", username="events_only"))
    html = client.get(url("inspect", event.pk)).content.decode()
    assert purchase_url not in html and f"Purchase #{event.purchase_id}" in html


# Reprocess ----------------------------------------------------------------------------------


@pytest.fixture
def failed_event(purchase, fake_stripe):
    """A paid checkout whose completed event failed for good (Stripe was down for hours)."""
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    return StripeEventFactory(
        payload=event_for(fake_stripe.session(session_id)),
        status=E.FAILED,
        attempts=8,
        last_error="StripeUnavailable: gave up after 8 attempts",
    )


def test_reprocess_confirms_then_queues_the_event_and_logs_it(
    admin_client, admin_user, purchase, failed_event, django_capture_on_commit_callbacks
):
    confirm = admin_client.get(url("reprocess", failed_event.pk))
    assert confirm.status_code == 200
    assert "Yes, reprocess it" in confirm.content.decode()
    failed_event.refresh_from_db()
    assert failed_event.status == E.FAILED  # a GET changes nothing

    with django_capture_on_commit_callbacks() as queued:
        response = admin_client.post(url("reprocess", failed_event.pk))
    assert response.status_code == 302
    assert response["Location"] == url("inspect", failed_event.pk)
    failed_event.refresh_from_db()
    assert (failed_event.status, failed_event.next_attempt_at) == (E.RECEIVED, None)
    assert failed_event.attempts == 8  # kept unless asked
    assert len(queued) == 1
    entry = ModelLogEntry.objects.get(action=desk.REPROCESS_EVENT)
    assert entry.user == admin_user
    assert entry.object_id == str(failed_event.pk)
    assert entry.data == {"status": "failed", "attempts": 8}

    queued[0]()  # the task cluster (sync in tests) runs it
    failed_event.refresh_from_db()
    purchase.refresh_from_db()
    assert failed_event.status == E.PROCESSED
    assert purchase.status == Purchase.Status.PAID


def test_reprocess_can_count_attempts_from_zero(
    admin_client, failed_event, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        admin_client.post(url("reprocess", failed_event.pk), {"reset_attempts": "on"})
    failed_event.refresh_from_db()
    assert (failed_event.status, failed_event.attempts) == (E.RECEIVED, 0)


def test_reprocess_refuses_an_event_that_is_queued_or_running(admin_client, home):
    running = StripeEventFactory(
        status=E.RECEIVED, next_attempt_at=timezone.now() + timedelta(minutes=4)
    )
    confirm = admin_client.get(url("reprocess", running.pk)).content.decode()
    assert "queued or running now" in confirm and "Yes, reprocess it" not in confirm
    response = admin_client.post(url("reprocess", running.pk), follow=True)
    assert "queued or running now" in response.content.decode()
    running.refresh_from_db()
    assert running.next_attempt_at is not None
    assert not ModelLogEntry.objects.exists()


def test_site_history_shows_the_reprocess(admin_client, inbox, django_capture_on_commit_callbacks):
    event = inbox["stuck"]
    with django_capture_on_commit_callbacks():
        admin_client.post(url("reprocess", event.pk))
    html = admin_client.get(reverse("wagtailadmin_reports:site_history")).content.decode()
    assert "Shop desk: reprocess a Stripe event" in html
    assert url("inspect", event.pk) in html


# Permissions --------------------------------------------------------------------------------


def menu(client) -> str:
    return client.get(reverse("wagtailadmin_home")).content.decode()


def event_urls(event) -> list[tuple[str, str]]:
    return [
        ("get", url("index")),
        ("get", url("index_results")),
        ("get", url("inspect", event.pk)),
        ("get", url("reprocess", event.pk)),
        ("post", url("reprocess", event.pk)),
    ]


def test_an_editor_without_event_permissions_is_refused_everywhere(client, inbox):
    client.force_login(desk_user("view_purchase", username="clerk"))
    assert url("index") not in menu(client)
    for method, path in event_urls(inbox["stuck"]):
        assert_refused(client, path, method)
    inbox["stuck"].refresh_from_db()
    assert inbox["stuck"].status == E.FAILED and not ModelLogEntry.objects.exists()


def test_view_events_permission_lists_and_inspects_but_cannot_reprocess(client, inbox):
    client.force_login(desk_user("view_stripeevent", username="watcher"))
    assert url("index") in menu(client)
    assert client.get(url("index")).status_code == 200
    inspect = client.get(url("inspect", inbox["stuck"].pk))
    assert inspect.status_code == 200
    assert url("reprocess", inbox["stuck"].pk) not in inspect.content.decode()
    for method, path in event_urls(inbox["stuck"])[3:]:
        assert_refused(client, path, method)
    inbox["stuck"].refresh_from_db()
    assert inbox["stuck"].status == E.FAILED and not ModelLogEntry.objects.exists()


def test_reprocess_permission_reprocesses(client, inbox, django_capture_on_commit_callbacks):
    client.force_login(desk_user("view_stripeevent", "reprocess_stripeevent", username="fixer"))
    with django_capture_on_commit_callbacks():
        assert client.post(url("reprocess", inbox["stuck"].pk)).status_code == 302
    inbox["stuck"].refresh_from_db()
    assert inbox["stuck"].status == E.RECEIVED


def test_reprocess_alone_is_not_enough(client, inbox):
    client.force_login(desk_user("reprocess_stripeevent", username="blind"))
    assert_refused(client, url("reprocess", inbox["stuck"].pk), "post")


# Dashboard ----------------------------------------------------------------------------------


def dashboard(client) -> str:
    response = client.get(reverse("wagtailadmin_home"))
    assert response.status_code == 200
    return response.content.decode()


def panel(html: str) -> str:
    match = re.search(r'<section[^>]*id="wpd-shop-section".*?</section>', html, re.S)
    assert match, "no shop panel"
    return match.group(0)


def total(html: str, label: str) -> str:
    match = re.search(rf"<span>{re.escape(label)}</span>\s*((?:<strong>[^<]*</strong>\s*)+)", html)
    assert match, label
    return " ".join(re.findall(r"<strong>([^<]*)</strong>", match.group(1)))


@pytest.fixture
def sales(home):
    """Sales in the last 30 days in two currencies, a refund, downloads; and what must not
    count: a complimentary grant, a live-mode sale (the tests' key is a test key), an old sale,
    a pending checkout, an uncounted download."""
    now = timezone.now()
    guide = ProductPageFactory(parent=home, title="Guide", price_amount=1250)
    songs = ProductPageFactory(parent=home, title="Songs", price_amount=500, currency="EUR")
    bought = [
        PurchaseFactory(paid=True, product=guide, paid_at=now - timedelta(days=days))
        for days in (0, 0, 3)
    ]
    PurchaseFactory(
        paid=True,
        product=songs,
        paid_at=now - timedelta(days=1),
        status=Purchase.Status.REFUNDED,
        amount_refunded=200,
    )
    PurchaseFactory(paid=True, product=guide, paid_at=now, source=Purchase.Source.GRANT)
    PurchaseFactory(paid=True, product=guide, paid_at=now, livemode=True)
    PurchaseFactory(paid=True, product=guide, paid_at=now - timedelta(days=31))
    PurchaseFactory(product=guide)
    for days, counted in ((0, True), (0, True), (2, True), (1, False), (40, True)):
        DownloadEventFactory(
            link=DownloadLinkFactory(purchase=bought[0]),
            created_at=now - timedelta(days=days),
            counted=counted,
        )
    heartbeat.beat()


def test_dashboard_panel_shows_30_days_of_sales_revenue_and_downloads(admin_client, sales):
    html = panel(dashboard(admin_client))
    assert total(html, "Sales") == "4"
    assert total(html, "Revenue (after refunds)") == "€3.00 $37.50"
    assert total(html, "Downloads") == "3"
    assert "Test mode" in html
    # One bar per day, with its count as a tooltip; no script.
    assert html.count('<rect class="wpd-bar"') == 60
    today = timezone.localdate()
    assert f"<title>{today:%m/%d/%Y}: 2</title>" in html
    assert "<script" not in html
    assert "wpd-dash" in html and "help-block" not in html  # nothing to warn about


def test_dashboard_warns_about_events_failed_for_good(admin_client, sales, inbox):
    html = panel(dashboard(admin_client))
    assert "1 Stripe event failed and will not be retried" in html
    assert url("index") + "?retrying=stuck" in html


def test_dashboard_warns_when_many_events_are_retrying(admin_client, sales):
    for _ in range(5):
        StripeEventFactory(
            status=E.FAILED, attempts=1, next_attempt_at=timezone.now() + timedelta(minutes=1)
        )
    assert "5 Stripe events are failing and being retried" in panel(dashboard(admin_client))


def test_dashboard_warns_when_no_cluster_ever_ran(admin_client, home):
    assert not ClusterHeartbeat.objects.exists()
    assert "No task cluster has run yet" in panel(dashboard(admin_client))


def test_dashboard_warns_about_a_stale_heartbeat_until_the_sweep_runs(admin_client, home):
    heartbeat.beat(now=timezone.now() - timedelta(minutes=20))
    html = panel(dashboard(admin_client))
    assert "No task cluster has picked up work for 20\xa0minutes" in html
    tasks.sweep()  # what the cluster runs every minute
    html = panel(dashboard(admin_client))
    assert "No task cluster" not in html
    assert "Task cluster last seen less than a minute ago" in html


def test_dashboard_panel_is_only_for_editors_who_may_view_purchases(client, sales, inbox):
    client.force_login(desk_user("view_stripeevent", username="events_only"))
    assert "wpd-dash" not in dashboard(client)
    client.force_login(desk_user("view_purchase", username="sales_only"))
    html = panel(dashboard(client))
    assert total(html, "Sales") == "5"  # the inbox fixture's purchase too
    # The warning is shown; the link to the events is not (they may not see them).
    assert "failed and will not be retried" in html
    assert url("index") not in html


def test_listing_survives_nonsense_in_its_query(admin_client, inbox):
    query = {
        "status": ["bogus", "failed"],
        "type": "<script>alert(1)</script>",
        "received_at_from": "not a date",
        "retrying": "sideways",
        "ordering": "payload__password",
        "q": "%_\\'\"",
        "p": "999",
    }
    response = admin_client.get(url("index"), query)
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.content.decode()
