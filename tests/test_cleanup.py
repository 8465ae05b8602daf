"""``manage.py cleanup`` and its daily task: exactly what RETENTION says goes, the rest stays."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    DownloadEventFactory,
    DownloadLinkFactory,
    FileDownloadCountFactory,
    ProductPageFactory,
    PurchaseFactory,
    StripeEventFactory,
)
from wagtail_paid_delivery import library, links, outbox, retention
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadLink,
    FileDownloadCount,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

pytestmark = pytest.mark.django_db

S = Purchase.Status
E = StripeEvent.Status


def ago(**kwargs):
    return timezone.now() - timedelta(**kwargs)


def purchase(product, status, *, created, **fields):
    made = PurchaseFactory(product=product, status=status, **fields)
    Purchase.objects.filter(pk=made.pk).update(created_at=created)
    return made


def link(purchase, *, expired_days_ago):
    expires = ago(days=expired_days_ago)
    return DownloadLinkFactory(
        purchase=purchase, created_at=expires - timedelta(days=1), expires_at=expires
    )


def event(link, *, days_ago, outcome="served"):
    made = DownloadEventFactory(link=link, outcome=outcome)
    DownloadEvent.objects.filter(pk=made.pk).update(created_at=ago(days=days_ago))
    return made


def stripe_event(status, *, days_ago, purchase=None):
    made = StripeEventFactory(status=status, purchase=purchase)
    StripeEvent.objects.filter(pk=made.pk).update(received_at=ago(days=days_ago))
    return made


def email(purchase, status, *, days_ago):
    made, _ = outbox.promise(OutboundEmail.Kind.RESEND, to=purchase.email, purchases=[purchase])
    OutboundEmail.objects.filter(pk=made.pk).update(status=status, created_at=ago(days=days_ago))
    return made


@pytest.fixture
def records(home):
    """One of everything cleanup must remove or keep, named for what should happen to it."""
    product = ProductPageFactory(parent=home, files=1)
    paid = purchase(product, S.PAID, created=ago(days=400), paid_at=ago(days=400))
    refunded = purchase(product, S.REFUNDED, created=ago(days=400), paid_at=ago(days=400))
    disputed = purchase(product, S.DISPUTED, created=ago(days=400), paid_at=ago(days=400))
    r = {}
    # Links: expired longer ago than the keep period (180 days) go, with their counters and all
    # their events, recent or not; inside it they stay, whatever the purchase's state.
    r["gone_link"] = link(paid, expired_days_ago=181)
    r["gone_refunded_link"] = link(refunded, expired_days_ago=200)
    r["kept_link"] = link(paid, expired_days_ago=179)
    r["kept_live_link"] = links.issue_link(paid, reason="webhook").link
    r["kept_disputed_link"] = link(disputed, expired_days_ago=300)
    r["gone_counter"] = FileDownloadCountFactory(link=r["gone_link"], count=3)
    r["kept_counter"] = FileDownloadCountFactory(link=r["kept_link"], count=2)
    # Download events: older than 180 days go (also on links that stay), except a disputed
    # purchase's.
    r["gone_event_of_gone_link"] = event(r["gone_link"], days_ago=182)
    r["gone_recent_refusal_of_gone_link"] = event(r["gone_link"], days_ago=2, outcome="expired")
    r["gone_old_event_of_kept_link"] = event(r["kept_link"], days_ago=181)
    r["kept_event"] = event(r["kept_link"], days_ago=179)
    r["kept_disputed_event"] = event(r["kept_disputed_link"], days_ago=301)
    r["gone_linkless_event"] = event(None, days_ago=181, outcome="invalid")
    r["kept_linkless_event"] = event(None, days_ago=1, outcome="invalid")
    # Purchases: never-paid ones Stripe reported expired or failed go after 30 days; pending
    # ones never (Stripe may still pay them), nor anything that was ever paid.
    r["gone_expired"] = purchase(product, S.EXPIRED, created=ago(days=31), expired_at=ago(days=30))
    r["gone_failed"] = purchase(product, S.FAILED, created=ago(days=31), failed_at=ago(days=31))
    r["kept_failed_with_a_payment"] = purchase(
        product, S.FAILED, created=ago(days=60), stripe_payment_intent_id="pi_test_mismatch"
    )
    r["kept_young_expired"] = purchase(product, S.EXPIRED, created=ago(days=29))
    r["kept_young_pending"] = purchase(product, S.PENDING, created=ago(hours=23))
    r["kept_old_pending"] = purchase(product, S.PENDING, created=ago(days=90))
    r["kept_paid"], r["kept_refunded"], r["kept_disputed"] = paid, refunded, disputed
    r["kept_never_paid_refunded"] = purchase(product, S.REFUNDED, created=ago(days=90))
    r["kept_revoked"] = purchase(product, S.REVOKED, created=ago(days=900), paid_at=ago(days=900))
    # Stripe events: processed and ignored ones older than 90 days go; failed and unprocessed
    # ones are work still to do.
    r["gone_processed"] = stripe_event(E.PROCESSED, days_ago=91, purchase=r["gone_expired"])
    r["gone_ignored"] = stripe_event(E.IGNORED, days_ago=120)
    r["kept_processed"] = stripe_event(E.PROCESSED, days_ago=89)
    r["kept_failed_event"] = stripe_event(E.FAILED, days_ago=200)
    r["kept_received_event"] = stripe_event(E.RECEIVED, days_ago=200)
    r["kept_event_of_gone_purchase"] = stripe_event(
        E.PROCESSED, days_ago=1, purchase=r["gone_failed"]
    )
    # Emails: recorded more than 180 days ago go, sent or failed; one still waiting to be sent
    # is work to do.
    r["gone_sent_email"] = email(paid, "sent", days_ago=181)
    r["gone_failed_email"] = email(paid, "failed", days_ago=300)
    r["kept_recent_email"] = email(paid, "sent", days_ago=179)
    r["kept_waiting_email"] = email(paid, "pending", days_ago=300)
    # Library sign-in links: gone once used or expired; a live one is kept.
    r["gone_expired_sign_in"] = library.issue_sign_in(paid.email, now=ago(hours=1)).sign_in
    used = library.issue_sign_in(paid.email)
    library.use_sign_in(used.token)
    r["gone_used_sign_in"] = used.sign_in
    r["kept_live_sign_in"] = library.issue_sign_in(paid.email).sign_in
    return r


def remaining(r):
    """Names of the records still in the database."""
    return {
        name for name, obj in r.items() if type(obj)._default_manager.filter(pk=obj.pk).exists()
    }


def kept(r):
    return {name for name in r if name.startswith("kept")}


def run(*args):
    out = StringIO()
    call_command("cleanup", *args, stdout=out)
    return out.getvalue()


def test_cleanup_removes_exactly_what_is_past_retention_and_keeps_the_rest(records):
    output = run()

    assert remaining(records) == kept(records)
    assert output.splitlines() == [
        "Removed 4 download events.",
        "Removed 2 download links.",
        "Removed 2 Stripe events.",
        "Removed 2 unpaid purchases.",
        "Removed 2 emails.",
        "Removed 2 library sign-in links.",
    ]
    # An event whose purchase went keeps its own record, pointing at nothing.
    records["kept_event_of_gone_purchase"].refresh_from_db()
    assert records["kept_event_of_gone_purchase"].purchase is None
    # The paid purchase's live and recent links still work, counters and all.
    assert links.check_link(DownloadLink.objects.get(pk=records["kept_live_link"].pk))
    assert FileDownloadCount.objects.get(pk=records["kept_counter"].pk).count == 2

    # Nothing is due any more: a second run removes nothing, and says so.
    assert run().splitlines()[-1] == "Nothing was due."
    assert remaining(records) == kept(records)


def test_dry_run_counts_the_same_and_removes_nothing(records):
    everything = set(records)
    output = run("--dry-run")
    assert output.splitlines() == [
        "Would remove 4 download events.",
        "Would remove 2 download links.",
        "Would remove 2 Stripe events.",
        "Would remove 2 unpaid purchases.",
        "Would remove 2 emails.",
        "Would remove 2 library sign-in links.",
    ]
    assert remaining(records) == everything


def test_small_batches_remove_the_same(records):
    result = retention.cleanup(batch_size=1)
    assert result.removed == {
        "download_events": 4,
        "download_links": 2,
        "stripe_events": 2,
        "unpaid_purchases": 2,
        "emails": 2,
        "library_sign_ins": 2,
    }
    assert remaining(records) == kept(records)


def test_a_run_out_of_time_stops_between_batches_and_the_next_carries_on(records):
    first = retention.cleanup(batch_size=1, time_budget=0)
    assert first.stopped_early and first.total == 0
    assert "stopped early" in first.summary()
    retention.cleanup()
    assert remaining(records) == kept(records)


def test_unpaid_purchases_are_never_removed_while_a_session_may_be_open(home):
    product = ProductPageFactory(parent=home)
    young = purchase(product, S.EXPIRED, created=ago(hours=20))
    old = purchase(product, S.EXPIRED, created=ago(hours=26))
    young_failed = purchase(product, S.FAILED, created=ago(hours=1))
    pending = purchase(product, S.PENDING, created=ago(days=400))
    # Even with the shortest period allowed (a day), a Checkout Session's lifetime (24 h, plus
    # a margin) is waited out, whatever the status says.
    shortest = {**settings.WAGTAIL_PAID_DELIVERY, "RETENTION": {"unpaid_purchases": 86400}}
    with override_settings(WAGTAIL_PAID_DELIVERY=shortest):
        assert retention.cleanup().removed["unpaid_purchases"] == 1
        assert not Purchase.objects.filter(pk=old.pk).exists()
        assert Purchase.objects.filter(pk=young.pk).exists()
        # Six hours on, the 20-hour-old one is 26 hours old; the failed one only 7.
        later = retention.cleanup(now=timezone.now() + timedelta(hours=6))
        assert later.removed["unpaid_purchases"] == 1
    assert set(Purchase.objects.values_list("pk", flat=True)) == {young_failed.pk, pending.pk}


def test_retention_none_keeps_that_kind_forever(records):
    with override_settings(
        WAGTAIL_PAID_DELIVERY={
            **settings.WAGTAIL_PAID_DELIVERY,
            "RETENTION": {"download_records": None, "stripe_events": None},
        }
    ):
        result = retention.cleanup()
    assert result.removed == {
        "download_events": 0,
        "download_links": 0,
        "stripe_events": 0,
        "unpaid_purchases": 2,
        "emails": 2,
        "library_sign_ins": 2,
    }


def test_a_hand_off_of_a_removed_link_is_a_plain_404_that_records_nothing(client, home):
    product = ProductPageFactory(parent=home, files=1)
    paid = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(paid, reason="webhook")
    file = product.product_files[0]
    url = client.post(reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk]))[
        "Location"
    ]
    DownloadLink.objects.filter(pk=issued.link.pk).update(expires_at=ago(days=200))
    assert retention.cleanup().removed["download_links"] == 1
    assert client.get(url).status_code == 404
    assert (
        client.get(reverse("wagtail_paid_delivery:download", args=[issued.token])).status_code
        == 404
    )
    assert not DownloadEvent.objects.exists()


def test_bad_batch_size_is_a_usage_error_with_exit_status_2(db):
    with pytest.raises(CommandError) as raised:
        call_command("cleanup", "--batch-size", "0")
    assert raised.value.returncode == 2


def test_bad_retention_setting_is_exit_status_2(db):
    with (
        override_settings(
            WAGTAIL_PAID_DELIVERY={**settings.WAGTAIL_PAID_DELIVERY, "RETENTION": {"x": 1}}
        ),
        pytest.raises(CommandError) as raised,
    ):
        call_command("cleanup")
    assert raised.value.returncode == 2
    assert "Unknown key(s) in WAGTAIL_PAID_DELIVERY['RETENTION']: x" in str(raised.value)


def test_the_daily_task_reports_and_is_scheduled(records):
    from django_q.models import Schedule

    from wagtail_paid_delivery import tasks
    from wagtail_paid_delivery.schedules import ensure_schedules

    summary = tasks.cleanup()
    assert summary == (
        "removed 4 download events, 2 download links, 2 Stripe events, 2 unpaid purchases, "
        "2 emails, 2 library sign-in links"
    )
    assert remaining(records) == kept(records)
    ensure_schedules()
    schedule = Schedule.objects.get(name="wagtail_paid_delivery.cleanup")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
        "wagtail_paid_delivery.tasks.cleanup",
        Schedule.MINUTES,
        24 * 60,
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_cleanup_skips_a_purchase_a_fulfillment_holds_and_leaves_it_paid(home):
    if connection.vendor != "postgresql":
        pytest.skip("row locks are proven on PostgreSQL; SQLite ignores select_for_update")
    product = ProductPageFactory(parent=home)
    late = purchase(product, S.EXPIRED, created=ago(days=40))
    other = purchase(product, S.EXPIRED, created=ago(days=40))
    locked, release = threading.Event(), threading.Event()

    def fulfillment_in_progress():
        # What fulfill_checkout does: lock the row, (Stripe says paid), move it, commit.
        try:
            with transaction.atomic():
                row = Purchase.objects.select_for_update().get(pk=late.pk)
                locked.set()
                assert release.wait(30)
                row.status, row.paid_at = S.PAID, timezone.now()
                row.save(update_fields=["status", "paid_at"])
        finally:
            connections.close_all()

    worker = threading.Thread(target=fulfillment_in_progress)
    worker.start()
    try:
        assert locked.wait(30)
        started = time.monotonic()
        result = retention.cleanup()
        waited = time.monotonic() - started
    finally:
        release.set()
        worker.join(30)
    assert waited < 10  # it did not wait for the lock
    assert result.removed["unpaid_purchases"] == 1  # the other one
    assert not Purchase.objects.filter(pk=other.pk).exists()
    late.refresh_from_db()
    assert late.status == S.PAID
    # Paid now: no later run removes it.
    retention.cleanup()
    assert Purchase.objects.filter(pk=late.pk).exists()
