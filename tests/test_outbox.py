"""No email lost: every promised email is a row, retried by our sweep until sent or failed.

The mail server is Django's locmem backend (``mail.outbox``); a server that is down is
``tests.mail_backends.DownBackend``, swapped in with the ``settings`` fixture (Django reads
``EMAIL_BACKEND`` at every send).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_q.models import Schedule

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory
from tests.mail_backends import DownBackend, LockProbeBackend
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import needs_postgres
from wagtail_paid_delivery import fulfillment, outbox, tasks
from wagtail_paid_delivery.models import DownloadLink, OutboundEmail, Purchase

pytestmark = pytest.mark.django_db

DOWN = "tests.mail_backends.DownBackend"
SLOW = "tests.mail_backends.SlowBackend"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
LINK_RE = re.compile(r"http://testserver(/shop/d/([A-Za-z0-9_-]{43})/)")


@pytest.fixture(autouse=True)
def _fresh_backends():
    DownBackend.handed = []
    LockProbeBackend.targets, LockProbeBackend.probes, LockProbeBackend.in_transaction = [], [], []


@pytest.fixture
def paid(home):
    """A paid purchase whose delivery email has not been promised yet."""
    return PurchaseFactory(
        paid=True, product=ProductPageFactory(parent=home, title="Atlas"), email="ada@example.com"
    )


def make_due(email: OutboundEmail) -> None:
    """Time passes: the email's next attempt is now."""
    OutboundEmail.objects.filter(pk=email.pk).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def seconds_until(moment) -> float:
    return (moment - timezone.now()).total_seconds()


def token_in(message) -> tuple[str, str]:
    """The download page path and token a message carries."""
    found = LINK_RE.search(message.body)
    assert found, message.body
    return found.group(1), found.group(2)


def test_mail_server_down_then_back_exactly_one_delivery_email_arrives(
    client, purchase, fake_stripe, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = DOWN
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID

    email = OutboundEmail.objects.get()
    assert (email.kind, email.purchase, email.to) == ("delivery", purchase, "ada@example.com")
    assert (email.status, email.attempts) == (OutboundEmail.Status.PENDING, 1)
    assert "SMTPServerDisconnected" in email.last_error
    assert 55 <= seconds_until(email.next_attempt_at) <= 67  # 1 minute, plus up to 10% jitter
    assert mail.outbox == [] and purchase.delivery_email_sent_at is None
    # Not due: the sweep leaves it alone, and another copy of the task does not send it early.
    assert tasks.sweep_emails().startswith("queued 0")
    assert tasks.send_delivery_email(purchase.pk) == "waiting"

    make_due(email)
    assert tasks.sweep_emails().startswith("queued 1")  # runs the task (sync mode): down again
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.PENDING, 2)
    assert 115 <= seconds_until(email.next_attempt_at) <= 133  # 2 minutes

    settings.EMAIL_BACKEND = LOCMEM  # the mail server is back
    make_due(email)
    assert tasks.sweep_emails().startswith("queued 1")
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.SENT, 3)
    assert email.sent_at is not None and email.next_attempt_at is None and email.last_error == ""
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is not None

    # Sent is sent: later sweeps and a late copy of the task send nothing more.
    make_due(email)
    assert tasks.sweep_emails().startswith("queued 0")
    assert tasks.send_delivery_email(purchase.pk) == "already_sent"
    assert len(mail.outbox) == 1

    # Every attempt carried the same Message-ID.
    assert len(DownBackend.handed) == 2
    ids = {m.message()["Message-ID"] for m in [*DownBackend.handed, *mail.outbox]}
    assert ids == {email.message_id}

    # The links of the failed attempts were revoked; the delivered one works.
    for message in DownBackend.handed:
        path, _ = token_in(message)
        refused = client.get(path)
        assert refused.status_code == 410
        assert 'data-reason="revoked"' in refused.content.decode()
    path, _ = token_in(mail.outbox[0])
    assert client.get(path).status_code == 200
    assert DownloadLink.objects.filter(purchase=purchase).count() == 3
    assert DownloadLink.objects.filter(purchase=purchase, revoked_at=None).count() == 1


def test_the_email_is_promised_with_the_payment_and_a_lost_task_is_swept(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    # On-commit callbacks never run in this test: purchase_paid and its task are lost.
    assert fulfillment.fulfill_checkout(session_id).outcome == "fulfilled"
    email = OutboundEmail.objects.get()
    assert (email.kind, email.purchase_id, email.to) == ("delivery", purchase.pk, "ada@example.com")
    assert (email.status, email.attempts, email.next_attempt_at) == ("pending", 0, None)

    # Young promises are left to their own task.
    assert tasks.sweep_emails().startswith("queued 0")
    OutboundEmail.objects.filter(pk=email.pk).update(
        created_at=timezone.now() - outbox.STUCK_AFTER - timedelta(seconds=1)
    )
    assert tasks.sweep_emails().startswith("queued 1")
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.SENT, 1)
    assert len(mail.outbox) == 1


def test_a_worker_that_died_mid_send_is_taken_over_after_its_lease_with_the_same_message_id(
    paid,
):
    email = outbox.promise_delivery(paid)
    # A worker claims it, and dies (maybe after the mail server took the message).
    assert outbox.claim(email.pk) is not None
    assert tasks.send_delivery_email(paid.pk) == "waiting"  # leased: nobody else sends it
    assert tasks.sweep_emails().startswith("queued 0")
    email.refresh_from_db()
    assert seconds_until(email.next_attempt_at) >= 299  # the lease: at least five minutes
    make_due(email)  # the lease ran out
    assert tasks.sweep_emails().startswith("queued 1")
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.SENT, 2)
    assert mail.outbox[0].message()["Message-ID"] == email.message_id


def test_after_max_attempts_the_email_is_failed_logged_and_can_be_tried_again(
    paid, settings, caplog, django_capture_on_commit_callbacks
):
    settings.WAGTAIL_PAID_DELIVERY = {**SETTINGS, "MAX_EMAIL_ATTEMPTS": 3}
    settings.EMAIL_BACKEND = DOWN
    with caplog.at_level(logging.WARNING, logger="wagtail_paid_delivery.outbox"):
        assert tasks.send_delivery_email(paid.pk) == "failed (attempt 1 of 3)"
        email = OutboundEmail.objects.get()
        for _ in range(2):
            make_due(email)
            assert tasks.sweep_emails().startswith("queued 1")
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.FAILED, 3)
    assert email.next_attempt_at is None and "SMTPServerDisconnected" in email.last_error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "FAILED for good after 3 attempts" in errors[0].getMessage()
    # Failed is final for the sweep, and queryable for the shop owner.
    assert tasks.sweep_emails() == "queued 0; failed for good 1"
    assert list(OutboundEmail.objects.filter(status=OutboundEmail.Status.FAILED)) == [email]
    assert tasks.send_delivery_email(paid.pk) == "skipped (failed)"
    assert not DownloadLink.objects.filter(purchase=paid, revoked_at=None).exists()
    assert mail.outbox == []

    # The mail server is fixed; the shop owner tries it again.
    settings.EMAIL_BACKEND = LOCMEM
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox.retry_failed(email.pk)
    email.refresh_from_db()
    assert (email.status, email.attempts) == (OutboundEmail.Status.SENT, 1)
    assert len(mail.outbox) == 1
    assert not outbox.retry_failed(email.pk)  # only failed emails


def test_a_purchase_refunded_before_the_retry_gets_no_email(paid, settings):
    settings.EMAIL_BACKEND = DOWN
    assert tasks.send_delivery_email(paid.pk).startswith("failed")
    fulfillment.revoke_purchase(paid, reason="refunded by phone", status=Purchase.Status.REFUNDED)
    settings.EMAIL_BACKEND = LOCMEM
    email = OutboundEmail.objects.get()
    make_due(email)
    assert tasks.sweep_emails().startswith("queued 1")
    email.refresh_from_db()
    assert email.status == OutboundEmail.Status.CANCELLED
    assert email.last_error == "the purchase is refunded"
    assert mail.outbox == []
    assert not DownloadLink.objects.filter(purchase=paid, revoked_at=None).exists()


def test_a_purchase_without_an_address_is_cancelled_not_retried(paid):
    Purchase.objects.filter(pk=paid.pk).update(email="")
    assert tasks.send_delivery_email(paid.pk) == "cancelled: no email address"
    assert OutboundEmail.objects.get().status == OutboundEmail.Status.CANCELLED
    assert not DownloadLink.objects.exists() and mail.outbox == []


def test_the_row_keeps_what_to_send_never_the_message_or_a_token(paid):
    assert tasks.send_delivery_email(paid.pk) == "sent"
    message = mail.outbox[0]
    _, token = token_in(message)
    rows = [*OutboundEmail.objects.values(), *OutboundEmail.purchases.through.objects.values()]
    stored = json.dumps(rows, default=str)
    assert token not in stored
    assert message.subject not in stored and "Download your files" not in stored
    assert "ada@example.com" in stored  # the recipient is what it needs to know


def test_one_delivery_email_per_purchase_is_a_database_rule(paid):
    first = outbox.promise_delivery(paid)
    assert outbox.promise_delivery(paid).pk == first.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        OutboundEmail.objects.create(
            kind=OutboundEmail.Kind.DELIVERY, purchase=paid, to=paid.email, message_id="<x@y>"
        )
    # Emails listing purchases (resends) are not limited by it.
    for _ in range(2):
        outbox.promise(OutboundEmail.Kind.RESEND, to=paid.email, purchases=[paid])
    assert OutboundEmail.objects.count() == 3
    assert len({e.message_id for e in OutboundEmail.objects.all()}) == 3


def test_the_message_id_is_on_the_shops_domain(paid, settings):
    settings.DEFAULT_FROM_EMAIL = "Star Shop <orders@shop.example>"
    assert tasks.send_delivery_email(paid.pk) == "sent"
    message_id = mail.outbox[0].message()["Message-ID"]
    assert re.fullmatch(r"<[^<>@\s]+@shop\.example>", message_id)
    assert message_id == OutboundEmail.objects.get().message_id


def test_the_email_sweep_is_scheduled_every_minute(db):
    schedule = Schedule.objects.get(name="wagtail_paid_delivery.email_sweep")
    assert (schedule.func, schedule.minutes) == ("wagtail_paid_delivery.tasks.sweep_emails", 1)
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1


def test_the_sweep_takes_each_due_email_once_and_a_bounded_batch(paid, settings, monkeypatch):
    settings.EMAIL_BACKEND = DOWN
    others = [
        PurchaseFactory(paid=True, product=paid.product, email=f"b{n}@example.com")
        for n in range(3)
    ]
    for purchase in [paid, *others]:
        assert tasks.send_delivery_email(purchase.pk).startswith("failed")
    OutboundEmail.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    settings.EMAIL_BACKEND = LOCMEM
    monkeypatch.setattr(outbox, "SWEEP_BATCH", 3)
    assert tasks.sweep_emails().startswith("queued 3")
    assert tasks.sweep_emails().startswith("queued 1")
    assert tasks.sweep_emails().startswith("queued 0")
    assert len(mail.outbox) == 4
    assert sorted(m.to[0] for m in mail.outbox) == sorted(
        ["ada@example.com", "b0@example.com", "b1@example.com", "b2@example.com"]
    )


def test_the_dashboard_warns_about_emails_retrying_and_failed(admin_client, paid, settings):
    from tests.test_event_inbox import dashboard, panel

    settings.EMAIL_BACKEND = DOWN
    settings.WAGTAIL_PAID_DELIVERY = {**SETTINGS, "MAX_EMAIL_ATTEMPTS": 2}
    tasks.send_delivery_email(paid.pk)
    html = panel(dashboard(admin_client))
    assert "1 email to a buyer could not be sent yet and is being retried" in html
    make_due(OutboundEmail.objects.get())
    tasks.sweep_emails()  # the second and last attempt fails too
    html = panel(dashboard(admin_client))
    assert "1 email to a buyer failed every attempt and will not be retried" in html
    assert "being retried" not in html


# PostgreSQL: claims and row locks --------------------------------------------------------------


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_attempts_of_one_email_send_it_once(home, settings):
    settings.EMAIL_BACKEND = SLOW
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    email = outbox.promise_delivery(purchase)
    results = run_at_once(
        [lambda: outbox.attempt(email.pk)] * 3 + [lambda: tasks.send_delivery_email(purchase.pk)]
    )
    assert results.count("sent") == 1, results
    assert set(results) <= {"sent", "waiting", "already_sent"}, results
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1
    assert OutboundEmail.objects.get().attempts == 1


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_sweeps_and_the_late_task_send_a_lost_email_once(home, settings):
    settings.EMAIL_BACKEND = SLOW
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    email = outbox.promise_delivery(purchase)
    OutboundEmail.objects.filter(pk=email.pk).update(
        created_at=timezone.now() - outbox.STUCK_AFTER - timedelta(seconds=1)
    )
    results = run_at_once(
        [tasks.sweep_emails, tasks.sweep_emails, lambda: tasks.send_delivery_email(purchase.pk)]
    )
    assert len(mail.outbox) == 1, results
    assert OutboundEmail.objects.get().status == OutboundEmail.Status.SENT


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_no_row_lock_is_held_while_the_mail_server_is_called(home, settings):
    settings.EMAIL_BACKEND = "tests.mail_backends.LockProbeBackend"
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    email = outbox.promise_delivery(purchase)
    LockProbeBackend.targets = [(Purchase, purchase.pk), (OutboundEmail, email.pk)]
    assert tasks.send_delivery_email(purchase.pk) == "sent"
    # Another connection locked the purchase and the email row at once (NOWAIT), mid-send.
    assert LockProbeBackend.probes == [("Purchase", True), ("OutboundEmail", True)]
    assert LockProbeBackend.in_transaction == [False]
    assert len(mail.outbox) == 1


def test_an_email_task_that_waited_past_stuck_after_sends_before_the_sweeps_copy(paid, monkeypatch):
    """The delivery email's task waited in a long queue; the sweep took it for lost and queued
    a copy at the back. The task that arrives first sends it, once."""
    queued: list[tuple[int, str | None]] = []
    monkeypatch.setattr(
        "wagtail_paid_delivery.outbox.enqueue",
        lambda pk, token=None: queued.append((pk, token)),
    )
    email = outbox.promise_delivery(paid)
    OutboundEmail.objects.filter(pk=email.pk).update(
        created_at=timezone.now() - outbox.STUCK_AFTER - timedelta(seconds=1)
    )
    assert tasks.sweep_emails().startswith("queued 1")
    ((pk, token),) = queued
    assert tasks.send_delivery_email(paid.pk) == "sent"
    assert tasks.send_email(pk, token) != "sent"
    assert len(mail.outbox) == 1
    assert OutboundEmail.objects.get().attempts == 1
