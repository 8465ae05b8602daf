"""Hostile bodies with valid signatures, through the real webhook URL, on SQLite and PostgreSQL.

A signature proves who sent a body, not that it is sane: a leaked secret, a buggy proxy or a test
tool can sign anything. Whatever is signed, the webhook answers a clear 400 (a body that cannot
be a Stripe event; nothing is stored), 413 (too large to read) or 200 with a stored event, and
processing what was stored ends (ignored, processed or failed), never in a 500 or a retry loop.
"""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from tests.factories import StripeEventFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import WEBHOOK_URL, event_for, post_event, sign_payload, start_checkout
from tests.test_fulfillment import Receiver
from wagtail_paid_delivery import inbox, signals, stripe_api
from wagtail_paid_delivery.models import Purchase, StripeEvent
from wagtail_paid_delivery.tasks import process_stripe_event

HANDLED = "checkout.session.completed"


def envelope(**fields) -> dict:
    """An event envelope as Stripe sends it, with ``fields`` replaced."""
    return {
        "id": "evt_1HostileTest",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {"object": {"id": "cs_test_1", "object": "checkout.session"}},
        "livemode": False,
        "type": "customer.updated",
        **fields,
    }


def body(**fields) -> bytes:
    return json.dumps(envelope(**fields)).encode()


def post(client, payload: bytes, **kwargs):
    return post_event(client, payload, **kwargs)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# 400: bodies that cannot be a Stripe event ------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # Deep nesting: Python's json gives up (RecursionError) past ~1000 levels...
        (
            b'{"id": "evt_1", "type": "x.y", "data": ' + nested(100_000).encode() + b"}",
            "body nested too deeply",
        ),
        # ... and much less than that is already no Stripe object.
        (
            b'{"id": "evt_1", "type": "x.y", "data": '
            + nested(stripe_api.MAX_WEBHOOK_DEPTH).encode()
            + b"}",
            "body nested too deeply",
        ),
        # Not an object, or no string id.
        (b"", "body is not JSON"),
        (b"[]", "body is not a Stripe event"),
        (b"null", "body is not a Stripe event"),
        (b'"evt_1"', "body is not a Stripe event"),
        (body(id=123), "body is not a Stripe event"),
        (body(id=None), "body is not a Stripe event"),
        (body(id=["evt_1"]), "body is not a Stripe event"),
        (body(id={"id": "evt_1"}), "body is not a Stripe event"),
        # Ids that no Stripe event has: longer than the column, NUL, other prefixes, paths.
        (body(id="evt_" + "a" * 252), "event id is not a Stripe event id"),
        (body(id="evt_" + "a" * 100_000), "event id is not a Stripe event id"),
        (body(id="evt_1\u0000"), "event id is not a Stripe event id"),
        (body(id="evt_"), "event id is not a Stripe event id"),
        (body(id=""), "event id is not a Stripe event id"),
        (body(id="cs_test_1"), "event id is not a Stripe event id"),
        (body(id="evt_1/../../admin"), "event id is not a Stripe event id"),
        (body(id="evt_1 OR 1=1"), "event id is not a Stripe event id"),
        (body(id="evt_\u00e9"), "event id is not a Stripe event id"),
        # Types that no Stripe event has.
        (body(type=None), "event type is not a Stripe event type"),
        (body(type=7), "event type is not a Stripe event type"),
        (body(type=""), "event type is not a Stripe event type"),
        (body(type=["checkout.session.completed"]), "event type is not a Stripe event type"),
        (body(type="x" * 101), "event type is not a Stripe event type"),
        (body(type=HANDLED + "\u0000"), "event type is not a Stripe event type"),
        (body(type=HANDLED + "\n"), "event type is not a Stripe event type"),
        # JSON that Python accepts and JSON (and PostgreSQL's jsonb) does not.
        (body().replace(b'"livemode": false', b'"livemode": NaN'), "body is not JSON"),
        (body().replace(b'"livemode": false', b'"livemode": Infinity'), "body is not JSON"),
        (body().replace(b'"livemode": false', b'"livemode": -Infinity'), "body is not JSON"),
        (body().replace(b'"livemode": false', b'"livemode": 1e999'), "number out of range"),
        (body().replace(b'"livemode": false', b'"livemode": -1e999'), "number out of range"),
        (
            body().replace(b'"livemode": false', b'"livemode": ' + b"9" * 5000),
            "number out of range",
        ),
        # A key given twice: which one wins depends on who parses it.
        (
            b'{"id": "evt_1", "type": "x.y", "id": "evt_2", "data": {}}',
            "duplicate key in body",
        ),
        (
            b'{"id": "evt_1", "type": "x.y", "data": {"object": {"a": 1, "a": 2}}}',
            "duplicate key in body",
        ),
        # Two keys that differ only by a NUL and the character it would be stored as.
        (
            b'{"id": "evt_1", "type": "x.y", "data": {"a\\u0000": 1, "a\\ufffd": 2}}',
            "duplicate key in body",
        ),
        # Encodings: invalid UTF-8, UTF-16 (which is valid UTF-8 full of NULs), a BOM.
        (
            body(type="customer.updated").replace(b"customer", b"cust\xffomer", 1),
            "body is not UTF-8",
        ),
        (json.dumps(envelope()).encode("utf-16-le"), "body is not JSON"),
        (b"\xef\xbb\xbf" + body(), "body is not JSON"),
        (b"\xff\xfe" + json.dumps(envelope()).encode("utf-16-le"), "body is not UTF-8"),
    ],
    ids=lambda value: value[:40] if isinstance(value, bytes) else value,
)
def test_webhook_refuses_signed_bodies_that_cannot_be_events(client, db, payload, reason):
    response = post(client, payload)
    assert response.status_code == 400
    assert response.content == reason.encode()
    assert response["Content-Type"].startswith("text/plain")
    assert not StripeEvent.objects.exists()


def test_webhook_refuses_a_body_of_many_megabytes_before_reading_it(client, db):
    padding = "x" * (5 * 1024 * 1024)
    payload = body(data={"object": {"id": "cs_test_1", "padding": padding}})
    response = post(client, payload)
    assert response.status_code == 413
    assert response.content == b"body too large"
    assert not StripeEvent.objects.exists()


def test_webhook_size_limit_is_exact(client, db):
    # The largest accepted body is stored; one byte more is refused.
    base = body(data={"object": {"padding": ""}})
    room = stripe_api.MAX_WEBHOOK_BYTES - len(base)
    largest = body(data={"object": {"padding": "x" * room}})
    assert len(largest) == stripe_api.MAX_WEBHOOK_BYTES
    assert post(client, largest).status_code == 200
    too_big = body(id="evt_2HostileTest", data={"object": {"padding": "x" * (room + 1)}})
    assert post(client, too_big).status_code == 413
    assert list(StripeEvent.objects.values_list("stripe_id", flat=True)) == ["evt_1HostileTest"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_webhook_answers_413_under_a_smaller_django_upload_limit(client, db):
    response = post(client, body(data={"object": {"padding": "x" * 2000}}))
    assert response.status_code == 413
    assert response.content == b"body too large"
    assert not StripeEvent.objects.exists()


def test_webhook_nesting_limit_is_exact(client, db):
    # The envelope is level 1: data may nest MAX_WEBHOOK_DEPTH - 1 levels.
    deepest = nested(stripe_api.MAX_WEBHOOK_DEPTH - 1)
    payload = b'{"id": "evt_1", "type": "x.y", "data": ' + deepest.encode() + b"}"
    response = post(client, payload)
    assert response.status_code == 200
    assert response.content == b"ignored"
    assert StripeEvent.objects.get().payload["data"] == json.loads(deepest)


def test_webhook_accepts_the_longest_stripe_id(client, db):
    longest = "evt_" + "a" * 251
    assert post(client, body(id=longest)).status_code == 200
    assert StripeEvent.objects.get().stripe_id == longest


# Signatures from the future ----------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [301, 3600, 10**12])
def test_webhook_refuses_signature_from_the_future(client, db, ahead):
    response = post(client, body(), timestamp=int(time.time()) + ahead)
    assert response.status_code == 400
    assert response.content == b"signature from the future"
    assert not StripeEvent.objects.exists()


def test_webhook_accepts_clock_skew_within_the_tolerance(client, db):
    assert post(client, body(), timestamp=int(time.time()) + 290).status_code == 200
    with override_settings(WAGTAIL_PAID_DELIVERY={**SETTINGS, "WEBHOOK_TOLERANCE": 600}):
        assert post(client, body(id="evt_2"), timestamp=int(time.time()) + 500).status_code == 200
        assert post(client, body(id="evt_3"), timestamp=int(time.time()) + 700).status_code == 400
    assert StripeEvent.objects.count() == 2


def test_future_signature_from_an_unknown_secret_is_just_a_bad_signature(client, db):
    # Only a signature that verified learns how it is wrong.
    payload = body()
    header = sign_payload(payload, "whsec_attacker", timestamp=int(time.time()) + 3600)
    response = client.post(
        WEBHOOK_URL, payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )
    assert response.status_code == 400
    assert response.content == b"bad signature"


# 200: well-formed events we do not act on are stored as ignored -----------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": HANDLED, "data": "a string"}, "no object in payload"),
        ({"type": HANDLED, "data": ["a", "list"]}, "no object in payload"),
        ({"type": HANDLED, "data": {"object": ["a", "list"]}}, "no object in payload"),
        ({"type": HANDLED, "data": {"object": "cs_test_1"}}, "no object in payload"),
        ({"type": HANDLED, "data": None}, "no object in payload"),
        ({"type": HANDLED, "data": {"object": {"id": "cs_1", "metadata": "x"}}}, "no metadata"),
        ({"type": HANDLED, "data": {"object": {"id": "cs_1", "metadata": [1]}}}, "no metadata"),
        ({"type": HANDLED, "livemode": "false"}, "livemode does not match"),
        (
            {"type": "charge.refunded", "data": {"object": {"payment_intent": 5}}},
            "no PaymentIntent id",
        ),
        (
            {"type": "charge.refunded", "data": {"object": {"payment_intent": ["pi_1"]}}},
            "no PaymentIntent id",
        ),
        (
            {"type": "charge.dispute.created", "data": {"object": {"payment_intent": "pi_1/.."}}},
            "no PaymentIntent id",
        ),
        (
            {"type": "charge.refunded", "data": {"object": {"payment_intent": "pi_" + "1" * 300}}},
            "no PaymentIntent id",
        ),
        (
            {"type": "charge.refunded", "data": {"object": {"payment_intent": {"id": 7}}}},
            "no PaymentIntent id",
        ),
        ({"type": "x" * 100}, "unhandled event type"),
        ({"type": "customer.updated", "api_version": "v" * 10_000}, "unhandled event type"),
        # Numbers as large as Python parses them, and the extremes of floats.
        ({"created": 10**4000}, "unhandled event type"),
        (
            {"created": -(10**4000), "data": {"object": {"amount": 1.7976931348623157e308}}},
            "unhandled",
        ),
        ({"data": {"object": {"amount": 5e-324, "other": -0.0}}}, "unhandled event type"),
        # Strings PostgreSQL cannot store as they are: NUL and unpaired surrogates.
        ({"data": {"object": {"name": "a\u0000b", "k\u0000": "v"}}}, "unhandled event type"),
        ({"data": {"object": {"name": "\ud800 \udfff"}}}, "unhandled event type"),
        ({"type": HANDLED, "api_version": "\u0000" * 64}, "no metadata"),
    ],
)
def test_webhook_stores_odd_but_well_formed_events_as_ignored(
    client, db, fake_stripe, fields, reason
):
    response = post(client, body(**fields))
    assert response.status_code == 200
    assert response.content == b"ignored"
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.IGNORED
    assert reason in event.last_error
    assert fake_stripe.requests == []
    # What was stored reads back (the database kept it, with NUL and surrogates replaced).
    event.refresh_from_db()
    text = json.dumps(event.payload, ensure_ascii=False)
    assert "\u0000" not in text and "\\u0000" not in text
    assert "\\ud800" not in json.dumps(event.payload)


def test_nul_and_surrogates_are_stored_as_the_replacement_character(client, db):
    obj = {"name": "Ada\u0000Lovelace", "city": "\udc00Paris", "a\u0000": ["x\u0000"]}
    assert post(client, body(data={"object": obj})).status_code == 200
    stored = StripeEvent.objects.get().payload["data"]["object"]
    assert stored == {"name": "Ada\ufffdLovelace", "city": "\ufffdParis", "a\ufffd": ["x\ufffd"]}


def test_numbers_survive_the_round_trip(client, db):
    # (The largest float is stored too, but PostgreSQL hands it back as the integer it equals.)
    numbers = {"big": 10**4000, "tiny": 5e-324, "neg": -(2**70), "pi": 3.141592653589793}
    assert post(client, body(data={"object": numbers})).status_code == 200
    assert StripeEvent.objects.get().payload["data"]["object"] == numbers


def test_numbers_postgresql_cannot_take_as_written_are_stored_as_python_reads_them(client, db):
    # jsonb refuses a number with more than 16383 decimal places (either way of writing it);
    # Python reads both as 0.0, and that is what is stored.
    for i, number in enumerate([b"1e-20000", b"0." + b"0" * 17000 + b"1"]):
        payload = body(id=f"evt_tiny{i}").replace(b'"livemode": false', b'"livemode": ' + number)
        assert post(client, payload).content == b"ignored"
    assert list(StripeEvent.objects.values_list("payload__livemode", flat=True)) == [0.0, 0.0]


def test_a_body_is_stored_as_it_came_and_reads_back_as_parsed(client, db):
    # Stripe's bodies are strict JSON (checked as they arrive), so the text is stored as sent,
    # not serialised again; what is read back is what was parsed.
    payload = json.dumps(
        envelope(data={"object": {"name": "Zoë", "n": 1.5}}), indent=2, ensure_ascii=False
    )
    assert post(client, payload.encode()).content == b"ignored"
    stored = StripeEvent.objects.get()
    assert stored.payload == json.loads(payload)
    if connection.vendor == "sqlite":  # (jsonb keeps a parsed form, not the text)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT payload FROM {StripeEvent._meta.db_table}")  # noqa: S608
            assert cursor.fetchone()[0] == payload


def test_session_event_of_ours_with_a_junk_session_id_is_ignored_without_calling_stripe(
    client, purchase, fake_stripe, django_capture_on_commit_callbacks
):
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    calls = len(fake_stripe.requests)
    for i, junk in enumerate([123, "", "../../v1/customers", "cs_" + "a" * 300, ["cs_1"], None]):
        event = event_for(fake_stripe.session(session_id), event_id=f"evt_junk{i}")
        event["data"]["object"]["id"] = junk
        with django_capture_on_commit_callbacks(execute=True):
            response = post_event(client, event)
        assert response.status_code == 200
        assert response.content == b"ignored"
    assert set(StripeEvent.objects.values_list("status", "last_error")) == {
        ("ignored", "no Checkout Session id in payload")
    }
    assert len(fake_stripe.requests) == calls
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING


def test_a_paid_session_with_nul_in_the_buyers_name_is_still_fulfilled(
    client, purchase, fake_stripe, django_capture_on_commit_callbacks
):
    # Replacing NUL (rather than refusing the body) keeps a real payment's event.
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    event = event_for(fake_stripe.session(session_id))
    event["data"]["object"]["customer_details"]["name"] = "Ada\u0000"
    with Receiver(signals.purchase_paid) as paid, django_capture_on_commit_callbacks(execute=True):
        response = post_event(client, event)
    assert response.status_code == 200
    assert response.content == b"ok"
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEvent.Status.PROCESSED
    assert stored.payload["data"]["object"]["customer_details"]["name"] == "Ada\ufffd"
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    assert len(paid.calls) == 1


def test_replayed_hostile_event_is_a_duplicate(client, db):
    payload = body(data={"object": {"name": "\u0000"}})
    assert post(client, payload).content == b"ignored"
    assert post(client, payload).content == b"duplicate"
    assert StripeEvent.objects.count() == 1


# Processing what was stored: always ends, never loops --------------------------------------------


@pytest.mark.parametrize(
    ("type_", "payload_data"),
    [
        (HANDLED, "a string"),
        (HANDLED, {"object": []}),
        (HANDLED, {"object": {"id": 123}}),
        (HANDLED, {"object": {"id": "../../v1/customers"}}),
        ("payment_intent.succeeded", {"object": {"id": {"id": "pi_1"}}}),
        ("charge.refunded", {"object": {"payment_intent": {"id": 5}}}),
        ("charge.refunded", {"object": {"payment_intent": "pi_1\ufffd"}}),
        ("charge.dispute.closed", {"object": "x"}),
        ("invoice.payment_succeeded", {"object": {"metadata": "wpd_purchase"}}),
        ("invoice.payment_succeeded", {"object": {"metadata": {"wpd_purchase": {"a": 1}}}}),
        ("invoice.payment_succeeded", {"object": {"metadata": {"wpd_purchase": "not-a-uuid"}}}),
        ("customer.updated", None),
    ],
)
def test_processing_odd_stored_events_ends_without_calling_stripe(
    db, fake_stripe, type_, payload_data
):
    # Stored as `received` (as an older version, or a replay with `reprocess`, leaves them).
    event = StripeEventFactory(
        type=type_, payload={"id": "evt_odd", "type": type_, "data": payload_data}
    )
    outcome = process_stripe_event(event.pk)
    event.refresh_from_db()
    assert outcome in ("ignored", "not_ours")
    assert event.status == StripeEvent.Status.IGNORED
    assert event.next_attempt_at is None
    assert fake_stripe.requests == []
    assert process_stripe_event(event.pk) == "skipped (ignored)"
    assert not inbox.due_events().exists()


def test_an_event_stripe_does_not_know_fails_once_and_is_not_retried(
    client, purchase, fake_stripe, django_capture_on_commit_callbacks
):
    # Well formed and ours, but the session is unknown to Stripe: one attempt, then it waits
    # for a person (`reprocess`), not for the sweep.
    session_id = start_checkout(fake_stripe, purchase)
    event = event_for(fake_stripe.session(session_id))
    event["data"]["object"]["id"] = "cs_test_unknown"
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event).status_code == 200
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEvent.Status.FAILED
    assert stored.attempts == 1
    assert stored.next_attempt_at is None
    assert "permanent error" in stored.last_error
    assert not inbox.due_events().exists()
    assert inbox.sweep().startswith("queued 0")


def test_reprocessing_an_ignored_hostile_event_ignores_it_again(client, db, fake_stripe):
    post(client, body(type=HANDLED, data={"object": ["x\u0000"]}))
    stored = StripeEvent.objects.get()
    call_command("reprocess", stored.stripe_id, "--sync", stdout=StringIO())
    stored.refresh_from_db()
    assert stored.status == StripeEvent.Status.IGNORED
    assert stored.attempts == 1
    assert fake_stripe.requests == []


def test_store_reports_duplicate_only_when_the_event_is_really_stored(db):
    # Before bodies were checked, NaN reached the database: SQLite's JSON check constraint
    # refused it with an IntegrityError that was answered "duplicate" (200), so the event was
    # neither stored nor retried. A refusal that is not a redelivery must not pass as one.
    from django.db import DatabaseError

    with pytest.raises(DatabaseError):
        inbox.store({"id": "evt_nan", "type": "x.y", "data": {"object": {"n": float("nan")}}})
    assert not StripeEvent.objects.exists()
    event = {"id": "evt_twice", "type": "x.y", "data": {}}
    assert inbox.store(event) == inbox.Stored.IGNORED
    assert inbox.store(event) == inbox.Stored.DUPLICATE


def test_an_address_sent_with_escapes_is_found_by_the_buyer_data_search(client, db):
    """A sender may escape ASCII (``&`` as ``\\u0026``); the stored payload must still say it
    plainly, or erasing the buyer's data would miss the event (SQLite searches the text)."""
    from wagtail_paid_delivery import buyer_data

    raw = json.dumps(
        {
            "id": "evt_1Esc",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "type": "customer.created",
            "data": {"object": {"id": "cus_1", "object": "customer", "email": "tom&jerry@x.test"}},
        }
    ).replace("&", "\\u0026")
    assert post_event(client, raw.encode()).content == b"ignored"
    assert StripeEvent.objects.get().payload["data"]["object"]["email"] == "tom&jerry@x.test"
    found = buyer_data.find("tom&jerry@x.test").stripe_events
    assert [e.stripe_id for e in found] == ["evt_1Esc"]
