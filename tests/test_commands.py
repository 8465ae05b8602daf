"""manage.py trigger and manage.py reprocess: what they do and their exit statuses.

``trigger`` is the sandbox emulator's command (``sandbox.stripe_emulator``), so its tests skip
where that app is not installed (``tests.settings``, the suite run against the built wheel).
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.factories import ProductPageFactory, PurchaseFactory, StripeEventFactory
from tests.stripe_fake import event_for, start_checkout
from tests.test_fulfillment import Receiver
from wagtail_paid_delivery import signals
from wagtail_paid_delivery.models import Purchase, StripeEvent

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(*args) -> CommandError:
    with pytest.raises(CommandError) as excinfo:
        run(*args)
    return excinfo.value


@pytest.fixture
def purchase(home):
    return PurchaseFactory(product=ProductPageFactory(parent=home, price_amount=1250))


@pytest.fixture
def stand_in(fake_stripe):
    with override_settings(
        WAGTAIL_PAID_DELIVERY={
            **settings.WAGTAIL_PAID_DELIVERY,
            "STRIPE_API_BASE": "http://stripe-emulator.test",
        }
    ):
        yield fake_stripe


# trigger ---------------------------------------------------------------------------------------

needs_trigger = pytest.mark.skipif(
    not apps.is_installed("sandbox.stripe_emulator"),
    reason="trigger is the sandbox emulator's command: pytest --ds=tests.settings_emulator",
)


@needs_trigger
def test_trigger_refuses_without_a_stand_in(purchase, fake_stripe):
    error = fails("trigger", "pay", str(purchase.public_id))
    assert error.returncode == 2
    assert "STRIPE_API_BASE" in str(error) and "Stripe CLI" in str(error)
    assert fake_stripe.requests == []


@needs_trigger
def test_trigger_asks_the_stand_in_by_purchase_or_session_id(purchase, stand_in):
    session_id = start_checkout(stand_in, purchase)
    out, _ = run("trigger", "pay", str(purchase.public_id), "--email", "ada@example.com")
    assert f"pay: session {session_id} is complete/paid" in out
    assert stand_in.controls == [(session_id, "pay", {"email": "ada@example.com"})]
    [call] = stand_in.calls("POST", "/_emulator/")
    assert call.headers["authorization"] == "Bearer sk_test_tests"

    run("trigger", "refund", session_id, "--amount", "250")
    assert stand_in.controls[-1] == (session_id, "refund", {"amount": "250"})
    assert stand_in.charge(session_id)["amount_refunded"] == 250


@needs_trigger
def test_trigger_reports_a_refused_action_with_status_1(purchase, stand_in):
    session_id = start_checkout(stand_in, purchase)
    stand_in.expire(session_id)
    error = fails("trigger", "pay", session_id)
    assert error.returncode == 1
    assert "stand-in refused" in str(error) and "session is expired" in str(error)


@needs_trigger
def test_trigger_reports_an_unreachable_stand_in_with_status_1(purchase, stand_in):
    session_id = start_checkout(stand_in, purchase)
    stand_in.set_down(True)
    error = fails("trigger", "pay", session_id)
    assert error.returncode == 1
    assert "Could not reach the Stripe emulator" in str(error)


@needs_trigger
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("pay", "not-a-purchase"), "neither a purchase id"),
        (("pay", "3f1c2a7e-0000-4000-8000-000000000000"), "No purchase"),
        (("pay", "cs_test_x", "--amount", "5"), "--amount"),
    ],
)
def test_trigger_usage_errors_exit_2(stand_in, db, args, expected):
    error = fails("trigger", *args)
    assert error.returncode == 2
    assert expected in str(error)


@needs_trigger
def test_trigger_from_the_command_line_exits_2_without_a_stand_in():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_emulator"}
    result = subprocess.run(
        [sys.executable, "-m", "django", "trigger", "pay", "cs_test_x", "--skip-checks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "STRIPE_API_BASE" in result.stderr


# reprocess -------------------------------------------------------------------------------------


@pytest.fixture
def failed_event(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    return StripeEventFactory(
        payload=event_for(fake_stripe.session(session_id)),
        status=StripeEvent.Status.FAILED,
        attempts=8,
        last_error="StripeUnavailable: gave up after 8 attempts",
    )


def test_reprocess_failed_sync_fulfils_once(
    purchase, failed_event, django_capture_on_commit_callbacks
):
    with (
        Receiver(signals.purchase_paid) as delivered,
        django_capture_on_commit_callbacks(execute=True),
    ):
        out, _ = run("reprocess", "--failed", "--sync")
        out_again, _ = run("reprocess", failed_event.stripe_id, "--sync")
    assert f"{failed_event.stripe_id} (checkout.session.completed): fulfilled" in out
    assert "already_paid" in out_again
    failed_event.refresh_from_db()
    assert failed_event.status == StripeEvent.Status.PROCESSED
    assert failed_event.attempts == 10
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert len(delivered.calls) == 1


def test_reprocess_queues_and_resets_attempts(purchase, failed_event):
    # The test settings run django-q2 in sync mode: "queued" runs it at once.
    out, _ = run("reprocess", failed_event.stripe_id, "--reset-attempts")
    assert "queued" in out
    failed_event.refresh_from_db()
    assert (failed_event.status, failed_event.attempts) == (StripeEvent.Status.PROCESSED, 1)


def test_reprocess_exits_1_when_an_event_fails_again(failed_event, fake_stripe):
    fake_stripe.set_down(True)
    error = fails("reprocess", "--failed", "--sync", "--reset-attempts")
    assert error.returncode == 1
    failed_event.refresh_from_db()
    assert failed_event.status == StripeEvent.Status.FAILED
    assert failed_event.attempts == 1 and failed_event.next_attempt_at is not None


def test_reprocess_exits_1_for_unknown_events(failed_event):
    with pytest.raises(CommandError) as excinfo:
        call_command("reprocess", "evt_missing", stdout=StringIO(), stderr=(err := StringIO()))
    assert excinfo.value.returncode == 1
    assert "evt_missing: no such event stored" in err.getvalue()


def test_reprocess_needs_ids_or_failed(db):
    assert fails("reprocess").returncode == 2


def test_reprocess_with_nothing_failed_says_so(db):
    out, _ = run("reprocess", "--failed")
    assert "No events to reprocess." in out
