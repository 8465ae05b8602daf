"""The task that processes a paying event sends the delivery email itself, right after the
payment commits: one task per purchase, and no email queued behind the rest of a burst.

These tests commit for real (``transaction=True``): the hand-over happens on commit.
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import connection
from django_q.models import Task

from tests.concurrency import run_at_once
from tests.factories import PurchaseFactory
from tests.stripe_fake import event_for, start_checkout
from wagtail_paid_delivery import fulfillment, outbox, tasks
from wagtail_paid_delivery.models import OutboundEmail, Purchase, StripeEvent
from wagtail_paid_delivery.receivers import DELIVERY_EMAIL_TASK

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

#: What the whole paying task may cost: claim the event, read the session's purchase and product,
#: pay it (lock, the ids of a bundle's included products, license key, promises, save), record
#: the event, then claim the delivery email by its purchase (read with its license key; the
#: product page the payment read is reused), ask whether it included others, issue its link
#: (one INSERT), render (each file's served version) and record it. The sale notice recipients
#: come from the process's cache (``sale_notices.STAFF_CACHE_SECONDS``), the site's root URL
#: from Wagtail's cached site root paths. Before: 28; before that, the same work took two
#: tasks (16 and 13 queries) plus django-q2's bookkeeping for the second one.
PAYING_TASK_QUERIES = 21


@pytest.fixture
def paid_event(purchase, fake_stripe):
    """A stored ``checkout.session.completed`` for ``purchase``, paid at Stripe."""
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    return StripeEvent.objects.create(
        stripe_id="evt_paying_task",
        type="checkout.session.completed",
        payload=event_for(fake_stripe.session(session_id)),
        status=StripeEvent.Status.RECEIVED,
    )


def delivery_messages(purchase):
    return [m for m in mail.outbox if m.to == [Purchase.objects.get(pk=purchase.pk).email]]


def test_the_paying_event_task_sends_the_delivery_email_itself(paid_event, purchase):
    assert tasks.process_stripe_event(paid_event.pk) == "fulfilled"

    assert len(delivery_messages(purchase)) == 1
    email = OutboundEmail.objects.get(kind=OutboundEmail.Kind.DELIVERY, purchase=purchase)
    assert (email.status, email.attempts) == (OutboundEmail.Status.SENT, 1)
    # No second task was queued for it (the test settings run tasks at once and keep them).
    assert not Task.objects.filter(func=DELIVERY_EMAIL_TASK).exists()
    assert not Task.objects.filter(func=outbox.TASK).exists()
    paid_event.refresh_from_db()
    assert paid_event.status == StripeEvent.Status.PROCESSED


def test_the_email_task_or_the_sweep_after_it_sends_nothing_twice(paid_event, purchase):
    tasks.process_stripe_event(paid_event.pk)
    # Another door told purchase_paid too (the success page), or the broker ran a task twice.
    assert tasks.send_delivery_email(purchase.pk) == "already_sent"
    assert outbox.send_deliveries([purchase.pk, purchase.pk]) == ["already_sent"]
    assert tasks.sweep_emails().startswith("queued 0")
    assert tasks.process_stripe_event(paid_event.pk) == "skipped (processed)"
    assert len(delivery_messages(purchase)) == 1


def test_the_paying_task_and_email_tasks_at_once_send_one_email(paid_event, purchase, settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite ignores select_for_update; the claim is proven on PostgreSQL")
    settings.EMAIL_BACKEND = "tests.mail_backends.SlowBackend"
    results = run_at_once(
        [lambda: tasks.process_stripe_event(paid_event.pk)]
        + [lambda: tasks.send_delivery_email(purchase.pk)] * 2
    )
    assert results[0] == "fulfilled", results
    assert len(delivery_messages(purchase)) == 1
    assert OutboundEmail.objects.filter(purchase=purchase, kind="delivery").count() == 1


def test_an_error_after_the_payment_committed_hands_the_email_to_its_task(
    paid_event, purchase, monkeypatch
):
    def broken_log(message, *args):
        raise RuntimeError("log handler down")

    monkeypatch.setattr(fulfillment.logger, "info", broken_log)
    with pytest.raises(RuntimeError):
        tasks.process_stripe_event(paid_event.pk)

    paid_event.refresh_from_db()
    assert paid_event.status == StripeEvent.Status.FAILED  # retried; the purchase stays paid once
    assert Purchase.objects.get(pk=purchase.pk).status == Purchase.Status.PAID
    # The email went through its own task (queued at once), not left for the sweep.
    assert Task.objects.filter(func=outbox.TASK).count() == 1
    assert len(delivery_messages(purchase)) == 1


def test_a_paying_task_that_did_not_pay_sends_nothing(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, payment_status="unpaid", email="ada@example.com")
    event = StripeEvent.objects.create(
        stripe_id="evt_unpaid",
        type="checkout.session.completed",
        payload=event_for(fake_stripe.session(session_id)),
        status=StripeEvent.Status.RECEIVED,
    )
    assert tasks.process_stripe_event(event.pk) == "not_paid"
    assert not OutboundEmail.objects.filter(purchase=purchase).exists()
    assert mail.outbox == []


def test_the_paying_task_stays_within_its_queries(
    paid_event, purchase, fake_stripe, django_assert_max_num_queries
):
    # A worker in a burst has its caches warm (content types, sites): pay one purchase first.
    earlier = PurchaseFactory(product=purchase.product)
    session_id = start_checkout(fake_stripe, earlier)
    fake_stripe.pay(session_id, email="grace@example.com")
    warm_up = StripeEvent.objects.create(
        stripe_id="evt_warm_up",
        type="checkout.session.completed",
        payload=event_for(fake_stripe.session(session_id)),
        status=StripeEvent.Status.RECEIVED,
    )
    assert tasks.process_stripe_event(warm_up.pk) == "fulfilled"

    with django_assert_max_num_queries(PAYING_TASK_QUERIES):
        assert tasks.process_stripe_event(paid_event.pk) == "fulfilled"
    assert len(delivery_messages(purchase)) == 1
