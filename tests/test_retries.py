"""Retries that work with every broker: backoff on the inbox row, a sweep, claims, schedules."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory, StripeEventFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import Receiver, needs_postgres
from wagtail_paid_delivery import inbox, signals
from wagtail_paid_delivery.inbox import claim
from wagtail_paid_delivery.models import Purchase, StripeEvent
from wagtail_paid_delivery.schedules import SCHEDULES, ensure_schedules
from wagtail_paid_delivery.tasks import process_stripe_event, sweep


@pytest.fixture
def paid_session(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    return session_id


def make_due(event: StripeEvent) -> None:
    """Time passes: the event's next attempt is now."""
    StripeEvent.objects.filter(pk=event.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def seconds_until(moment) -> float:
    return (moment - timezone.now()).total_seconds()


def test_a_task_that_fails_twice_then_succeeds_backs_off_and_fulfils_once(
    client, purchase, paid_session, fake_stripe, django_capture_on_commit_callbacks
):
    fake_stripe.set_down(True)
    with Receiver(signals.purchase_paid) as delivered:
        with django_capture_on_commit_callbacks(execute=True):
            response = post_event(client, event_for(fake_stripe.session(paid_session)))
        assert response.status_code == 200
        event = StripeEvent.objects.get()
        assert (event.status, event.attempts) == (StripeEvent.Status.FAILED, 1)
        assert "StripeUnavailable" in event.last_error
        # 1 minute, plus up to 10% jitter.
        assert 55 <= seconds_until(event.next_attempt_at) <= 67

        # Not due yet: the sweep leaves it alone.
        assert sweep().startswith("queued 0")
        make_due(event)
        assert sweep().startswith("queued 1")  # runs the task (sync mode): fails again
        event.refresh_from_db()
        assert (event.status, event.attempts) == (StripeEvent.Status.FAILED, 2)
        assert 115 <= seconds_until(event.next_attempt_at) <= 133  # 2 minutes

        fake_stripe.set_down(False)
        make_due(event)
        with django_capture_on_commit_callbacks(execute=True):
            assert sweep().startswith("queued 1")
        event.refresh_from_db()
        assert (event.status, event.attempts) == (StripeEvent.Status.PROCESSED, 3)
        assert event.next_attempt_at is None and event.last_error == ""
        # Nothing left to do.
        assert sweep().startswith("queued 0")
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert len(delivered.calls) == 1


def test_backoff_doubles_and_is_capped():
    with override_settings(
        WAGTAIL_PAID_DELIVERY={
            **SETTINGS,
            "EVENT_RETRY_DELAY": 60,
            "EVENT_RETRY_MAX_DELAY": timedelta(minutes=10),
        }
    ):
        for attempts, minutes in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
            delay = inbox.backoff(attempts).total_seconds()
            assert minutes * 60 <= delay <= minutes * 66


def test_sweep_picks_up_an_event_whose_task_was_lost(client, purchase, paid_session, fake_stripe):
    # Stored, but the on-commit enqueue never ran (the process died, the broker lost it).
    post_event(client, event_for(fake_stripe.session(paid_session)))
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.RECEIVED

    # Young events are left to their own task.
    assert sweep().startswith("queued 0")
    StripeEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - inbox.STUCK_AFTER - timedelta(seconds=1)
    )
    assert sweep().startswith("queued 1")
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID


def test_after_max_attempts_the_event_stays_failed_and_is_logged(
    purchase, paid_session, fake_stripe, caplog
):
    event = StripeEventFactory(
        payload=event_for(fake_stripe.session(paid_session)), status="failed", attempts=7
    )
    fake_stripe.set_down(True)
    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery.tasks"):
        with pytest.raises(Exception, match="down"):
            process_stripe_event(event.pk)
        event.refresh_from_db()
        assert (event.status, event.attempts, event.next_attempt_at) == ("failed", 8, None)
        assert "gave up after 8 attempts" in event.last_error
        assert "FAILED for good" in caplog.text
        caplog.clear()
        assert sweep() == "queued 0; failed for good 1"
        assert "reprocess --failed" in caplog.text


def test_a_permanent_error_is_not_retried(home, fake_stripe):
    event = StripeEventFactory(
        payload=event_for({"id": "cs_test_unknown", "object": "checkout.session"})
    )
    with pytest.raises(Exception, match="No such checkout.session"):
        process_stripe_event(event.pk)
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.FAILED
    assert event.next_attempt_at is None
    assert "permanent error" in event.last_error
    assert event.attempts == 1


def test_a_rejected_api_key_is_retried_until_the_key_is_fixed(
    client, purchase, paid_session, fake_stripe, django_capture_on_commit_callbacks
):
    # A rolled key: Stripe answers 401 until the site sets the new one.
    fake_stripe.rejected_keys.add("sk_test_tests")
    with django_capture_on_commit_callbacks(execute=True):
        post_event(client, event_for(fake_stripe.session(paid_session)))
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert event.next_attempt_at is not None and "permanent" not in event.last_error
    fake_stripe.rejected_keys.clear()
    make_due(event)
    sweep()
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID


def test_claim_is_taken_once(db):
    event = StripeEventFactory()
    assert claim(event.pk) is not None
    # A second copy of the task (a duplicate delivery, a late original) finds it leased.
    assert claim(event.pk) is None
    assert process_stripe_event(event.pk) == "skipped (received)"


def test_two_sweeps_enqueue_a_due_event_once(db, monkeypatch):
    event = StripeEventFactory(status="failed", attempts=1)
    make_due(event)
    queued: list[tuple[int, str | None]] = []
    monkeypatch.setattr(
        "wagtail_paid_delivery.inbox.enqueue",
        lambda pk, token=None, **kw: queued.append((pk, token)),
    )
    sweep()
    sweep()
    assert len(queued) == 1
    pk, token = queued[0]
    event.refresh_from_db()
    # The lease is the task's token: only that task may start the event before it runs out.
    assert token == event.next_attempt_at.isoformat()
    assert claim(pk, "2020-01-01T00:00:00+00:00") is None
    assert claim(pk, token) is not None


def test_ensure_schedules_upserts_by_name(db):
    # Created by post_migrate when the test database was migrated.
    names = set(Schedule.objects.values_list("name", flat=True))
    assert set(SCHEDULES) <= names
    sweep_schedule = Schedule.objects.get(name="wagtail_paid_delivery.sweep")
    assert (sweep_schedule.func, sweep_schedule.minutes) == ("wagtail_paid_delivery.tasks.sweep", 1)
    assert sweep_schedule.schedule_type == Schedule.MINUTES and sweep_schedule.repeats == -1
    reconcile_schedule = Schedule.objects.get(name="wagtail_paid_delivery.reconcile")
    assert reconcile_schedule.minutes == 10

    # Edited by hand, duplicated: the next migrate puts it right.
    Schedule.objects.filter(pk=sweep_schedule.pk).update(minutes=30)
    Schedule.objects.create(name="wagtail_paid_delivery.sweep", func="x", minutes=5)
    ensure_schedules()
    ensure_schedules()
    [again] = Schedule.objects.filter(name="wagtail_paid_delivery.sweep")
    assert (again.pk, again.minutes, again.func) == (
        sweep_schedule.pk,
        1,
        "wagtail_paid_delivery.tasks.sweep",
    )


def test_schedules_can_be_left_to_the_site(db):
    Schedule.objects.filter(name__startswith="wagtail_paid_delivery.").delete()
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "SCHEDULES": False}):
        ensure_schedules()
    assert not Schedule.objects.filter(name__startswith="wagtail_paid_delivery.").exists()


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_copies_of_a_task_process_an_event_once(home, fake_stripe):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    event = StripeEventFactory(payload=event_for(fake_stripe.session(session_id)))
    with Receiver(signals.purchase_paid) as delivered:
        results = run_at_once([lambda: process_stripe_event(event.pk)] * 8)
    assert results.count("fulfilled") == 1
    assert all(r == "fulfilled" or r.startswith("skipped") for r in results)
    event.refresh_from_db()
    assert (event.status, event.attempts) == (StripeEvent.Status.PROCESSED, 1)
    assert len(delivered.calls) == 1


@pytest.mark.parametrize("status", ["received", "failed"])
def test_an_event_whose_last_attempt_never_finished_is_failed_for_good_and_reprocessable(
    purchase, paid_session, fake_stripe, caplog, status
):
    """Found by the process-level fault tests: a worker killed in an event's last allowed
    attempt (a task timeout while Stripe hangs, a crash) recorded nothing, so the event stayed
    ``received``/``failed`` with a lapsed lease: never retried, never reported, and never fed
    again by reconciliation, which holds its id."""
    from io import StringIO

    from django.core.management import call_command

    event = StripeEventFactory(
        payload=event_for(fake_stripe.session(paid_session)), status=status, attempts=7
    )
    assert claim(event.pk) is not None  # the 8th attempt starts; its worker is then killed
    event.refresh_from_db()
    assert event.attempts == 8
    # Its lease has not run out: the sweep leaves it alone (it may still be running).
    assert sweep() == "queued 0; failed for good 0"
    StripeEvent.objects.filter(pk=event.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery.inbox"):
        assert sweep() == "queued 0; failed for good 1"
    event.refresh_from_db()
    assert (event.status, event.next_attempt_at) == (StripeEvent.Status.FAILED, None)
    assert "never finished" in event.last_error
    assert f"reprocess {event.stripe_id}" in event.last_error
    assert "FAILED for good" in caplog.text

    call_command("reprocess", "--failed", "--sync", stdout=StringIO())
    event.refresh_from_db()
    assert event.status == StripeEvent.Status.PROCESSED
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID


def test_a_task_that_waited_past_stuck_after_is_not_sent_behind_the_sweeps_copy(
    client, purchase, paid_session, fake_stripe, monkeypatch
):
    """A launch-day burst: the event's task waits in the queue longer than STUCK_AFTER, so the
    sweep takes it for lost, leases it and queues a copy at the back. The original, reaching a
    worker at last, still runs it (and the copy finds it done)."""
    queued: list[tuple[int, str | None]] = []
    monkeypatch.setattr(
        "wagtail_paid_delivery.inbox.enqueue",
        lambda pk, token=None, **kw: queued.append((pk, token)),
    )
    post_event(client, event_for(fake_stripe.session(paid_session)))
    event = StripeEvent.objects.get()
    StripeEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - inbox.STUCK_AFTER - timedelta(seconds=1)
    )
    assert sweep().startswith("queued 1")
    ((copy, token),) = queued
    assert copy == event.pk and token

    assert process_stripe_event(event.pk) == "fulfilled"  # the webhook's own task
    assert process_stripe_event(copy, token) == "skipped (processed)"
    event.refresh_from_db()
    assert (event.status, event.attempts) == (StripeEvent.Status.PROCESSED, 1)
    # Once attempted, a lease is a worker's: a late duplicate still keeps out of it.
    StripeEvent.objects.filter(pk=event.pk).update(
        status="received", next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    assert claim(event.pk) is None
