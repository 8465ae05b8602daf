"""What one webhook delivery costs the database, through the real URL, with the ORM broker.

A new event is one transaction of two inserts (the event, with ``ON CONFLICT DO NOTHING
RETURNING``, and django-q2's task row); a duplicate is the same insert finding the first row,
and nothing else; an ignored event is stored and not queued. The suite runs django-q2 in sync
mode, so these tests switch it to what a site runs: asynchronous, the queue a table.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from tests.stripe_fake import event_for, post_event, start_checkout
from wagtail_paid_delivery import inbox
from wagtail_paid_delivery.models import StripeEvent
from wagtail_paid_delivery.tasks import process_stripe_event

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def orm_queue(monkeypatch):
    """django-q2 as a site runs it: the task becomes a row in django_q_ormq, nothing runs."""
    monkeypatch.setattr(Conf, "SYNC", False)


@pytest.fixture
def paid_event(purchase, fake_stripe):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    return event_for(fake_stripe.session(session_id))


def statements(captured) -> list[str]:
    """The first word of each statement sent, without the test transaction's savepoints."""
    return [q["sql"].split()[0] for q in captured if "SAVEPOINT" not in q["sql"]]


def queued_events() -> list[int | str]:
    """What the queued tasks are to process (decoded as the cluster decodes them)."""
    tasks = [SignedPackage.loads(row.payload) for row in OrmQ.objects.all()]
    assert all(task["func"] == inbox.TASK for task in tasks)
    return [task["args"][0] for task in tasks]


def test_a_new_event_is_two_inserts_in_one_transaction(
    client, paid_event, django_assert_max_num_queries
):
    # Four with the test transaction's savepoint around it (BEGIN/COMMIT on a real request).
    with django_assert_max_num_queries(4) as captured:
        response = post_event(client, paid_event)
    assert response.status_code == 200 and response.content == b"ok"
    assert statements(captured) == ["INSERT", "INSERT"]
    assert '"django_q_ormq"' in captured[-2]["sql"]
    event = StripeEvent.objects.get()
    assert (event.stripe_id, event.status, event.attempts) == (paid_event["id"], "received", 0)
    assert event.payload == paid_event and event.type == "checkout.session.completed"
    # Named by Stripe's id: the row's pk is not known until the insert that the task joins.
    assert queued_events() == [paid_event["id"]]


def test_a_duplicate_is_one_insert_that_finds_the_first_row(
    client, paid_event, django_assert_max_num_queries
):
    post_event(client, paid_event)
    with django_assert_max_num_queries(3) as captured:
        response = post_event(client, paid_event)
    assert response.status_code == 200 and response.content == b"duplicate"
    assert statements(captured) == ["INSERT"]
    assert StripeEvent.objects.count() == 1
    assert len(queued_events()) == 1  # no second task


def test_an_ignored_event_is_stored_and_not_queued(
    client, paid_event, django_assert_max_num_queries
):
    paid_event["data"]["object"]["metadata"] = {}  # another integration's session
    with django_assert_max_num_queries(3) as captured:
        response = post_event(client, paid_event)
    assert response.content == b"ignored"
    assert statements(captured) == ["INSERT"]
    assert StripeEvent.objects.get().status == StripeEvent.Status.IGNORED
    assert OrmQ.objects.count() == 0


def test_a_task_row_that_cannot_be_written_takes_the_event_back_and_stripe_retries(
    paid_event,
):
    table = OrmQ._meta.db_table
    with connection.cursor() as cursor:  # the queue's table gone: a real failed INSERT
        cursor.execute(f"ALTER TABLE {table} RENAME TO wpd_queue_away")
    response = post_event(Client(raise_request_exception=False), paid_event)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE wpd_queue_away RENAME TO {table}")
    # Not acknowledged, so Stripe delivers it again; nothing half-stored meanwhile.
    assert response.status_code == 500
    assert StripeEvent.objects.count() == 0

    response = post_event(Client(), paid_event)
    assert response.content == b"ok"
    assert queued_events() == [paid_event["id"]]


def test_the_queued_task_processes_the_event_it_names(client, paid_event, purchase):
    post_event(client, paid_event)
    (stripe_id,) = queued_events()
    assert process_stripe_event(stripe_id) == "fulfilled"
    assert process_stripe_event(stripe_id) == "skipped (processed)"
    purchase.refresh_from_db()
    assert purchase.status == "paid"
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
