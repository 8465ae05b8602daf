"""What one download costs the database, request by request, through the real URLs.

The counted hand-off GET reads the link, its purchase and the file in one query, then decides
and records everything in one transaction: on PostgreSQL one statement (lock the hand-off,
reserve the count, write the event, the hand-off and the link's total), elsewhere a few.
Nothing is counted again. Figures and the benchmark: docs/architecture.md and the README.
"""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.test_serving import counts, server_close
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadHandoff, DownloadLink

pytestmark = pytest.mark.django_db

DATA = b"x" * 10_000


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Atlas", files=0, download_limit=3)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(DATA, name="a.bin"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    return issued, file


def statements(captured) -> list[str]:
    """The statements sent, without the test transaction's savepoints."""
    return [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]


def get_file(client, url, **headers):
    response = client.get(url, headers=headers)
    body = b"".join(response.streaming_content)
    # (As a WSGI server without sendfile: the close records the bytes sent, one UPDATE.)
    server_close(response)
    return response, body


def test_the_download_page_runs_at_most_eight_queries(
    client, bought, django_assert_max_num_queries
):
    issued, _ = bought
    # (The eighth: the versions of the product's files, for each file's number, date and notes.)
    with django_assert_max_num_queries(8):
        response = client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    assert response.status_code == 200


def test_the_button_reads_link_purchase_file_and_count_in_one_query(
    client, bought, django_assert_max_num_queries
):
    issued, file = bought
    url = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    with django_assert_max_num_queries(1) as captured:
        response = client.post(url)
    assert response.status_code == 303
    assert statements(captured)[0].startswith("SELECT")


def test_a_counted_hand_off_get_reads_once_and_writes_in_one_transaction(
    client, bought, django_assert_max_num_queries
):
    issued, file = bought
    url = client.post(reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk]))[
        "Location"
    ]
    postgresql = connection.vendor == "postgresql"
    # One read; one statement (PostgreSQL) or five (SQLite) between the test transaction's
    # SAVEPOINT and RELEASE (a transaction's BEGIN and COMMIT outside tests); the bytes-sent UPDATE.
    expected = 5 if postgresql else 9
    with django_assert_max_num_queries(expected) as captured:
        response, body = get_file(client, url)
    assert (response.status_code, body) == (200, DATA)
    sent = statements(captured)
    assert sent[0].startswith("SELECT") and all(not s.startswith("SELECT") for s in sent[1:])
    if postgresql:
        assert sent[1].lstrip().startswith("WITH cur AS")
    assert counts(issued, file) == (1, 1)
    event = DownloadEvent.objects.get()
    assert (event.counted, event.bytes_promised, event.bytes_sent) == (True, 10_000, 10_000)
    state = DownloadHandoff.objects.get()
    assert (state.counted_event_id, state.bytes_promised) == (event.pk, 10_000)


def test_a_free_follow_up_get_reads_once_and_counts_nothing(
    client, bought, django_assert_max_num_queries
):
    issued, file = bought
    url = client.post(reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk]))[
        "Location"
    ]
    get_file(client, url, Range="bytes=0-99")
    # One read; one statement (PostgreSQL) or three (SQLite) in the transaction; the bytes sent.
    expected = 5 if connection.vendor == "postgresql" else 7
    with django_assert_max_num_queries(expected):
        response, body = get_file(client, url, Range="bytes=100-")
    assert (response.status_code, body) == (206, DATA[100:])
    assert counts(issued, file) == (1, 1)
    assert DownloadHandoff.objects.get().bytes_promised == 10_000
    assert list(DownloadEvent.objects.order_by("pk").values_list("counted", flat=True)) == [
        True,
        False,
    ]


def test_the_rows_read_become_the_same_instances_as_the_orms(bought):
    # Built from the raw row (links' own SQL): equal, field by field, to what the ORM builds,
    # saved-state included.
    issued, file = bought
    ticket = links.read_handoff(links.make_handoff(issued.link, file))
    link, found = links.find_handoff(ticket)
    assert link is not None and found is not None
    for built, model in (
        (link, type(link)),
        (link.purchase, type(link.purchase)),
        (found, type(found)),
    ):
        fresh = model.objects.get(pk=built.pk)
        for field in model._meta.concrete_fields:
            assert getattr(built, field.attname) == getattr(fresh, field.attname), field.name
        assert built._state.adding is False and built._state.db == "default"
    assert found.file.read() == DATA  # the file descriptor still works on the stored name


def test_a_post_init_listener_still_sees_the_instances(bought):
    from django.db.models.signals import post_init

    issued, file = bought
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(listener, sender=type(file))
    try:
        _link, found = links.find_handoff(links.read_handoff(links.make_handoff(issued.link, file)))
    finally:
        post_init.disconnect(listener, sender=type(file))
    assert seen and seen[-1] is found


def test_a_file_on_disk_is_served_with_its_current_size_and_time(client, bought, settings):
    # FileSystemStorage: one open and one fstat; what is sent is what the disk holds now, even
    # when the row's size is stale.
    import os

    from django.utils.http import http_date

    issued, file = bought
    type(file).objects.filter(pk=file.pk).update(size=1)
    url = links.handoff_url(issued.link, file)
    response = client.get(url)
    body = b"".join(response.streaming_content)
    server_close(response)
    assert body == DATA and response["Content-Length"] == str(len(DATA))
    stamp = os.stat(file.file.path).st_mtime
    assert response["Last-Modified"] == http_date(stamp)


def test_the_hand_off_url_is_what_reverse_gives():
    # Resolved once per script prefix and URLconf; the signed value is substituted.
    issued_link = DownloadLink(pk=7)
    file = ProductFileFactory.build(pk=9)
    url = links.handoff_url(issued_link, file)
    signed = url.rstrip("/").rsplit("/", 1)[-1]
    assert url == reverse("wagtail_paid_delivery:handoff", args=[signed])
    assert links.read_handoff(signed).link_id == 7


def test_deleting_events_leaves_a_hand_off_standing_on_its_count(client, bought):
    # Retention and erasure delete events; the hand-off keeps its counted request's id (a
    # reference, not a constraint, so deleting events touches no hand-off), and a follow-up
    # within the window still rides on that count.
    issued, file = bought
    url = client.post(reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk]))[
        "Location"
    ]
    get_file(client, url)
    counted = DownloadEvent.objects.get()
    DownloadEvent.objects.all().delete()
    assert DownloadHandoff.objects.get().counted_event_id == counted.pk
    response, body = get_file(client, url, Range="bytes=100-")
    assert (response.status_code, body) == (206, DATA[100:])
    assert counts(issued, file) == (1, 1)
    assert DownloadEvent.objects.get().counted is False
