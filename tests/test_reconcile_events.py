"""Reconciliation's events pass, and ``manage.py reconcile``.

A refund, a dispute or a payment whose webhook never arrived is found in Stripe's own list of
events (``GET /v1/events``, served by the in-memory Stripe) and goes through the inbox as if the
webhook had delivered it; the buyer's link is checked through the real download URLs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import Receiver, needs_postgres
from wagtail_paid_delivery import reconciliation, signals, tasks
from wagtail_paid_delivery.fulfillment import fulfill_checkout
from wagtail_paid_delivery.models import Purchase, ReconcileMark, StripeEvent

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    """Events are listed as soon as they exist (by default, those younger than two minutes are
    left to their webhook; ``test_events_younger_than_the_grace_are_left_to_the_webhook``)."""
    monkeypatch.setattr(reconciliation, "EVENT_GRACE", timedelta(0))


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """``tasks.reconcile`` as the schedule runs it; the events it queues are processed (the test
    cluster is synchronous)."""

    def run() -> str:
        with django_capture_on_commit_callbacks(execute=True):
            return tasks.reconcile()

    return run


@dataclass
class Bought:
    purchase: Purchase
    session_id: str
    #: The download page's path, from the delivery email.
    link: str
    #: The download button's path for the product's file.
    button: str

    def status(self) -> str:
        self.purchase.refresh_from_db()
        return self.purchase.status


@pytest.fixture
def bought(client, home, fake_stripe, django_capture_on_commit_callbacks):
    """Ada pressed Buy, paid, and the webhook delivered: her link arrived by email."""
    product = ProductPageFactory(parent=home, title="Field guide")
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    assert response.status_code == 303
    purchase = Purchase.objects.get()
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        for type_ in ("checkout.session.completed", "payment_intent.succeeded"):
            assert post_event(client, fake_stripe.last_event(type_)).status_code == 200
    [message] = mail.outbox
    url = message.body.split("Download your files:\n")[1].split("\n")[0]
    link = url.removeprefix("http://testserver")
    file_id = product.product_files[0].pk
    bought = Bought(purchase, session_id, link, f"{link}{file_id}/")
    assert bought.status() == Purchase.Status.PAID
    assert client.get(bought.link).status_code == 200
    return bought


def download(client, bought: Bought) -> str:
    """Press the button and fetch the file; returns the hand-off URL."""
    pressed = client.post(bought.button)
    assert pressed.status_code == 303
    response = client.get(pressed["Location"])
    assert response.status_code == 200
    b"".join(response.streaming_content)
    return pressed["Location"]


def stored(event: dict) -> StripeEvent:
    return StripeEvent.objects.get(stripe_id=event["id"])


# Healing ---------------------------------------------------------------------------------------


def test_a_refund_whose_webhook_never_came_is_healed_and_the_link_dies(
    client, bought, fake_stripe, run
):
    handoff = download(client, bought)
    fake_stripe.refund(bought.session_id)  # webhooks are down: nobody tells the shop
    assert client.get(bought.link).status_code == 200
    assert bought.status() == Purchase.Status.PAID

    summary = run()

    assert "2 listed" in summary and "1 queued" in summary and "1 already held" in summary
    refund = stored(fake_stripe.last_event("charge.refunded"))
    # Stored as the webhook would have stored it: the same body, processed the same way.
    assert refund.payload == fake_stripe.last_event("charge.refunded")
    assert refund.status == StripeEvent.Status.PROCESSED
    assert refund.purchase_id == bought.purchase.pk
    assert bought.status() == Purchase.Status.REFUNDED
    # The link dies everywhere a buyer could use it.
    assert client.get(bought.link).status_code == 410
    assert client.post(bought.button).status_code == 410
    assert client.get(handoff).status_code == 410


def test_a_dispute_whose_webhook_never_came_suspends_and_a_won_one_restores(
    client, bought, fake_stripe, run
):
    fake_stripe.dispute(bought.session_id)
    run()
    assert bought.status() == Purchase.Status.DISPUTED
    assert stored(fake_stripe.last_event("charge.dispute.created")).status == "processed"
    assert client.get(bought.link).status_code == 410
    assert client.post(bought.button).status_code == 410

    fake_stripe.close_dispute(bought.session_id, "won")  # missed too
    summary = run()
    assert "1 queued" in summary
    assert bought.status() == Purchase.Status.PAID
    assert client.get(bought.link).status_code == 200
    download(client, bought)


def test_a_paid_session_whose_webhook_never_came_is_delivered_from_its_event(
    client, home, fake_stripe, run
):
    """Found by its event even when the purchase is too old for the pending pass (a bank debit
    that cleared three days after checkout)."""
    product = ProductPageFactory(parent=home)
    client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    purchase = Purchase.objects.get()
    fake_stripe.pay(purchase.stripe_checkout_session_id, payment_status="unpaid")
    Purchase.objects.filter(pk=purchase.pk).update(created_at=timezone.now() - timedelta(days=3))
    fake_stripe.settle(purchase.stripe_checkout_session_id)

    run()

    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    [message] = mail.outbox
    link = message.body.split("Download your files:\n")[1].split("\n")[0]
    assert client.get(link.removeprefix("http://testserver")).status_code == 200
    assert StripeEvent.objects.filter(type="checkout.session.async_payment_succeeded").exists()


def test_events_not_ours_are_stored_ignored_for_the_same_reasons_as_the_webhooks(fake_stripe, run):
    foreign = event_for(
        {"id": "cs_foreign", "object": "checkout.session", "metadata": {"shop": "other"}},
        "checkout.session.completed",
    )
    live = event_for(
        {"id": "cs_live", "object": "checkout.session", "metadata": {}},
        "checkout.session.expired",
        livemode=True,
    )
    fake_stripe.events += [foreign, live]

    summary = run()

    assert "2 ignored" in summary and "0 queued" in summary
    assert stored(foreign).status == stored(live).status == StripeEvent.Status.IGNORED
    assert stored(foreign).last_error == "not this installation's checkout session"
    assert stored(live).last_error == "livemode does not match the configured secret key"


def test_only_the_types_we_act_on_are_asked_for(fake_stripe, run):
    run()
    [request] = fake_stripe.calls("GET", "/v1/events")
    assert sorted(request.params["types"]) == [
        "charge.dispute.closed",
        "charge.dispute.created",
        "charge.refunded",
        "checkout.session.async_payment_failed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.completed",
        "checkout.session.expired",
    ]
    assert request.params["limit"] == "100"


# Duplicates ------------------------------------------------------------------------------------


def test_events_the_webhook_delivered_are_not_stored_twice(client, bought, fake_stripe, run):
    fake_stripe.refund(bought.session_id, 250)
    post_event(client, fake_stripe.last_event("charge.refunded"))
    before = StripeEvent.objects.count()

    summary = run()
    again = run()  # and the next run lists them again (its window overlaps): still held

    assert "0 queued" in summary and "2 already held" in summary
    assert "0 queued" in again and "2 already held" in again
    assert StripeEvent.objects.count() == before
    for event in fake_stripe.events:
        assert StripeEvent.objects.filter(stripe_id=event["id"]).count() <= 1


def test_a_late_webhook_for_an_event_reconciliation_stored_changes_nothing(
    client, bought, fake_stripe, run, django_capture_on_commit_callbacks
):
    fake_stripe.dispute(bought.session_id)
    run()
    event = stored(fake_stripe.last_event("charge.dispute.created"))
    assert (event.status, event.attempts) == ("processed", 1)

    # Stripe's own retry of that webhook arrives after all.
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, fake_stripe.last_event("charge.dispute.created"))
    assert response.status_code == 200
    event.refresh_from_db()
    assert (event.status, event.attempts) == ("processed", 1)
    assert StripeEvent.objects.filter(stripe_id=event.stripe_id).count() == 1


# The high-water mark and the window --------------------------------------------------------------


def mark() -> ReconcileMark:
    return ReconcileMark.objects.get()


def whole_seconds(moment):
    """Stripe compares whole seconds: the mark moves in whole seconds."""
    return moment.replace(microsecond=0)


def test_the_first_run_looks_back_a_day_and_sets_the_mark(fake_stripe, run):
    before = timezone.now()
    run()
    [request] = fake_stripe.calls("GET", "/v1/events")
    since = int(request.params["created"]["gt"])
    assert abs(since - (before - reconciliation.FIRST_LOOKBACK).timestamp()) < 5
    assert mark().name == "events:test"
    assert abs((mark().listed_until - timezone.now()).total_seconds()) < 5


def test_each_run_starts_a_little_before_the_mark(fake_stripe, run):
    at = timezone.now() - timedelta(hours=1)
    ReconcileMark.objects.create(name="events:test", listed_until=at)
    run()
    [request] = fake_stripe.calls("GET", "/v1/events")
    assert int(request.params["created"]["gt"]) == int(
        (at - reconciliation.EVENT_OVERLAP).timestamp()
    )
    assert mark().listed_until > at


def test_events_younger_than_the_grace_are_left_to_the_webhook(
    bought, fake_stripe, run, monkeypatch
):
    monkeypatch.setattr(reconciliation, "EVENT_GRACE", timedelta(minutes=2))
    fake_stripe.refund(bought.session_id)
    assert "0 queued" in run()
    assert bought.status() == Purchase.Status.PAID
    # Three minutes later its webhook has still not come: the next run takes it.
    fake_stripe.events[-1]["created"] -= 180
    assert "1 queued" in run()
    assert bought.status() == Purchase.Status.REFUNDED


def test_the_command_lists_up_to_this_second(bought, fake_stripe, monkeypatch):
    """Someone running ``manage.py reconcile`` wants the refund they just made, grace or not."""
    monkeypatch.setattr(reconciliation, "EVENT_GRACE", timedelta(minutes=2))
    fake_stripe.refund(bought.session_id)
    out, _ = command("--sync")
    assert "1 new and queued" in out
    assert bought.status() == Purchase.Status.REFUNDED


def foreign_events(count: int, created: int) -> list[dict]:
    """Events of another integration (stored ignored, no Stripe call), all made at ``created``."""
    events = []
    for i in range(count):
        event = event_for(
            {"id": f"cs_other_{i}", "object": "checkout.session", "metadata": {}},
            "checkout.session.expired",
        )
        event["created"] = created
        events.append(event)
    return events


def test_a_long_window_is_listed_page_by_page_oldest_day_first(fake_stripe, run):
    now = int(timezone.now().timestamp())
    ReconcileMark.objects.create(
        name="events:test", listed_until=timezone.now() - timedelta(days=2, hours=12)
    )
    fake_stripe.events += foreign_events(230, now - 2 * 86400) + foreign_events(3, now - 3600)

    summary = run()

    assert "233 listed" in summary and "233 ignored" in summary
    requests = fake_stripe.calls("GET", "/v1/events")
    windows = [(r.params["created"]["gt"], r.params["created"].get("lte")) for r in requests]
    # Day 1 (230 events: three pages), then day 2 and the rest (one page each).
    assert [bool(r.params.get("starting_after")) for r in requests] == [0, 1, 1, 0, 0]
    assert windows[0] == windows[1] == windows[2]
    assert windows[0][1] == windows[3][0] and windows[3][1] == windows[4][0]
    assert requests[1].params["starting_after"] == fake_stripe.events[130]["id"]
    assert StripeEvent.objects.count() == 233


def test_a_run_within_its_page_budget_resumes_where_it_stopped(fake_stripe, run, monkeypatch):
    monkeypatch.setattr(reconciliation, "EVENT_PAGES_PER_RUN", 2)
    start = timezone.now() - timedelta(days=4)
    ReconcileMark.objects.create(name="events:test", listed_until=start)
    now = int(timezone.now().timestamp())
    fake_stripe.events += foreign_events(1, now - 3 * 86400 - 3600) + foreign_events(1, now - 60)

    assert "more next run" in run()
    assert StripeEvent.objects.count() == 1
    first_stop = mark().listed_until
    assert first_stop == whole_seconds(start - reconciliation.EVENT_OVERLAP + timedelta(days=2))

    run()
    assert "more next run" not in run()
    assert StripeEvent.objects.count() == 2


def test_stripe_unavailable_stops_cleanly_and_the_mark_waits(client, bought, fake_stripe, run):
    """A slice listed whole moves the mark; the one Stripe failed on does not, so the refund
    in it is found by the next run."""
    start = timezone.now() - timedelta(days=3)
    ReconcileMark.objects.create(name="events:test", listed_until=start)
    now = int(timezone.now().timestamp())
    others = foreign_events(1, now - int(2.5 * 86400))  # day 1
    fake_stripe.events += others
    fake_stripe.refund(bought.session_id)
    fake_stripe.events[-1]["created"] = now - int(1.5 * 86400)  # the refund: day 2
    fake_stripe.set_down(True, after=1)  # day 1 answered, then Stripe goes away
    fake_stripe.requests.clear()

    summary = run()

    assert "Stripe is unavailable" in summary and "pending: not checked" in summary
    assert mark().listed_until == whole_seconds(
        start - reconciliation.EVENT_OVERLAP + timedelta(days=1)
    )
    assert stored(others[0]).status == StripeEvent.Status.IGNORED
    assert not StripeEvent.objects.filter(type="charge.refunded").exists()
    assert bought.status() == Purchase.Status.PAID
    assert not fake_stripe.calls("GET", "/v1/checkout/sessions/")  # pending pass skipped

    fake_stripe.set_down(False)
    run()
    assert bought.status() == Purchase.Status.REFUNDED
    assert client.get(bought.link).status_code == 410
    assert mark().listed_until > timezone.now() - timedelta(minutes=1)


def test_stripe_failing_in_the_middle_of_a_slice_keeps_its_pages_and_the_mark(fake_stripe, run):
    at = timezone.now() - timedelta(hours=1)
    ReconcileMark.objects.create(name="events:test", listed_until=at)
    fake_stripe.events += foreign_events(150, int(timezone.now().timestamp()) - 600)
    fake_stripe.set_down(True, after=1, mode="500")

    assert "stopped: Stripe is unavailable" in run()
    assert StripeEvent.objects.count() == 100  # the first page, kept
    assert mark().listed_until == at

    fake_stripe.set_down(False)
    summary = run()
    assert "100 already held" in summary and "50 ignored" in summary
    assert StripeEvent.objects.count() == 150


def test_a_key_that_may_not_list_events_still_checks_pending_purchases(
    home, fake_stripe, run, monkeypatch
):
    monkeypatch.setattr(
        fake_stripe,
        "_list_events",
        lambda params: fake_stripe._error(
            403, "invalid_request_error", "The provided key does not have rak_event_read."
        ),
    )
    summary = run()
    assert "Stripe refused to list events" in summary
    assert "pending: nothing pending" in summary
    assert not ReconcileMark.objects.exists()


def test_a_rejected_key_stops_the_run_without_spending_checks(home, fake_stripe, run):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    start_checkout(fake_stripe, purchase)
    Purchase.objects.filter(pk=purchase.pk).update(created_at=timezone.now() - timedelta(hours=1))
    fake_stripe.rejected_keys.add(SETTINGS["STRIPE_SECRET_KEY"])  # the key was rolled

    summary = run()

    assert "Stripe refused to list events" in summary
    assert "pending: stripe unavailable 1" in summary
    purchase.refresh_from_db()
    assert (purchase.reconcile_checks, purchase.reconcile_after) == (0, None)
    assert not ReconcileMark.objects.exists()


def test_listed_events_are_held_to_a_webhook_bodys_rules(fake_stripe, run):
    """No signature (they come from Stripe's API with our key), but the same shape: a bad id is
    left out (and the listing goes on past it), a NUL is stored as U+FFFD, as the webhook
    would."""
    now = int(timezone.now().timestamp()) - 60
    events = foreign_events(101, now)
    events[0]["data"]["object"]["metadata"] = {"note": "a\x00b"}
    events[1]["id"] = "evt bad!"  # newest first: the last event of the first page
    fake_stripe.events += events

    summary = run()

    assert "101 listed" not in summary and "100 listed" in summary and "1 unstorable" in summary
    [second_page] = fake_stripe.calls("GET", "/v1/events")[1:]
    assert second_page.params["starting_after"] == "evt bad!"
    assert StripeEvent.objects.count() == 100
    assert stored(events[0]).payload["data"]["object"]["metadata"] == {"note": "a\ufffdb"}


def test_the_mark_is_kept_per_stripe_mode(fake_stripe, run):
    run()
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_SECRET_KEY": "sk_live_x"}):
        run()
    assert set(ReconcileMark.objects.values_list("name", flat=True)) == {
        "events:test",
        "events:live",
    }


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_runs_store_and_apply_a_missed_refund_once(home, fake_stripe):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    assert fulfill_checkout(session_id).outcome == "fulfilled"
    fake_stripe.refund(session_id)

    with Receiver(signals.purchase_revoked) as revoked:
        results = run_at_once([tasks.reconcile] * 4)

    # Two events the inbox lacked (the webhook delivered neither): each stored by one run.
    assert sum(int(re.search(r"(\d+) queued", r)[1]) for r in results) == 2, results
    assert StripeEvent.objects.count() == 2
    refund = stored(fake_stripe.last_event("charge.refunded"))
    assert (refund.status, refund.attempts) == (StripeEvent.Status.PROCESSED, 1)
    assert StripeEvent.objects.filter(type="charge.refunded").count() == 1
    assert len(revoked.calls) == 1
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.REFUNDED
    assert ReconcileMark.objects.count() == 1
    assert mark().listed_until > timezone.now() - timedelta(minutes=1)


# manage.py reconcile ---------------------------------------------------------------------------


def command(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("reconcile", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(*args) -> CommandError:
    with pytest.raises(CommandError) as excinfo:
        command(*args)
    return excinfo.value


@pytest.mark.parametrize("since", ["31d", "5w", "2020-01-01", "30d2h"])
def test_since_beyond_stripes_30_days_is_refused_before_asking_stripe(fake_stripe, since):
    error = refused("--since", since)
    assert error.returncode == 2
    assert "Stripe keeps events for 30 days" in str(error) and "--since 30d" in str(error)
    assert fake_stripe.requests == []
    assert not ReconcileMark.objects.exists()


@pytest.mark.parametrize(
    "since", ["yesterday", "30", "2999-01-01", "", "2026-02-30", "99999999w", "3x"]
)
def test_since_that_is_not_a_past_duration_or_date_is_refused(fake_stripe, since):
    assert refused("--since", since).returncode == 2
    assert fake_stripe.requests == []


def test_since_30_days_lists_the_whole_retention(bought, fake_stripe):
    ReconcileMark.objects.create(name="events:test", listed_until=timezone.now())
    fake_stripe.refund(bought.session_id)
    before = timezone.now()
    out, err = command("--since", "30d", "--sync")
    first = fake_stripe.calls("GET", "/v1/events")[0]
    assert abs(int(first.params["created"]["gt"]) - (before - timedelta(days=30)).timestamp()) < 5
    refund_id = fake_stripe.last_event("charge.refunded")["id"]
    assert f"stored {refund_id}" in out and f"{refund_id}: refunded" in out
    assert "1 new and queued" in out and "Pending purchases: nothing pending" in out
    assert err == ""
    assert bought.status() == Purchase.Status.REFUNDED


def test_since_after_the_mark_leaves_the_mark_alone(fake_stripe):
    at = timezone.now() - timedelta(days=2)
    ReconcileMark.objects.create(name="events:test", listed_until=at)
    out, _ = command("--since", "1d")
    assert f"High-water mark: {at.isoformat(timespec='seconds')} (unchanged)" in out
    assert mark().listed_until == at
    out, _ = command("--since", "3d")
    assert "(moved)" in out and mark().listed_until > at


def test_command_exits_1_when_stripe_is_unavailable(fake_stripe):
    fake_stripe.set_down(True)
    error = refused()
    assert error.returncode == 1
    assert "Stripe is unavailable" in str(error) and "run again later" in str(error)
    assert not ReconcileMark.objects.exists()


def test_command_needs_a_secret_key(fake_stripe):
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "STRIPE_SECRET_KEY": ""}):
        error = refused()
    assert error.returncode == 2 and "STRIPE_SECRET_KEY" in str(error)


def test_command_line_exit_status_for_since_beyond_30_days():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-m", "django", "reconcile", "--since", "45d", "--skip-checks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Stripe keeps events for 30 days" in result.stderr
