"""No byte without a count: what a hand-off's requests count, through the real URLs.

The rule (docs/architecture.md, "What counts as a download"): the first request served on a
hand-off counts, whatever it asks for; later ones ride on that count only within HANDOFF_WINDOW
and HANDOFF_BYTE_BUDGET (twice the file by default); a hand-off refused at the limit serves
nothing, ever. Offload backends: tests/test_offload.py and tests/test_nginx.py.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from django.utils.http import http_date

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory
from tests.test_serving import DATA, SIZE, counts, fetch, press, server_close
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadHandoff, FileDownloadCount

pytestmark = pytest.mark.django_db

ETAG = f'"{hashlib.sha256(DATA).hexdigest()}"'


@pytest.fixture
def bought(home):
    """A link to one 200 KiB file (tests/test_serving.py's DATA), with a limit of one."""
    from django.core.files.base import ContentFile

    from tests.factories import ProductFileFactory

    product = ProductPageFactory(parent=home, title="Atlas", files=0, download_limit=1)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(DATA, name="atlas.bin"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    return issued, file


def unlimited(bought):
    issued, _ = bought
    issued.link.download_limit = None
    issued.link.save(update_fields=["download_limit"])


def state(url) -> DownloadHandoff:
    return DownloadHandoff.objects.get(nonce=links.read_handoff(url.split("/d/h/")[1][:-1]).nonce)


# The first request counts, whatever it asks for ---------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({"If-None-Match": ETAG}, 200, DATA),
        ({"If-None-Match": "*"}, 200, DATA),
        ({"If-Modified-Since": http_date(2**33)}, 200, DATA),
        ({"If-Unmodified-Since": http_date(0)}, 200, DATA),
        ({"If-Match": '"nope"'}, 200, DATA),
        ({"Range": "bytes=100-", "If-Range": ETAG}, 206, DATA[100:]),
        ({"Range": "bytes=100-", "If-Range": '"other"'}, 200, DATA),
        ({"Range": "bytes=100-", "If-Range": http_date(0)}, 200, DATA),
        ({"Range": "bytes=100-", "If-None-Match": ETAG, "If-Range": ETAG}, 206, DATA[100:]),
        ({"Range": f"bytes={SIZE - 1}-"}, 206, DATA[-1:]),
        ({"Range": "bytes=-1"}, 206, DATA[-1:]),
        ({"Range": "bytes=1-1,3-3"}, 200, DATA),
    ],
)
def test_first_request_counts_whatever_its_range_or_conditional_headers(
    client, bought, headers, status, expected
):
    issued, file = bought
    response, body = fetch(client, press(client, issued, file), **headers)
    assert (response.status_code, body) == (status, expected)
    assert counts(issued, file) == (1, 1)
    event = DownloadEvent.objects.get()
    assert (event.outcome, event.counted, event.bytes_promised) == ("served", True, len(expected))


def test_a_304_made_by_conditional_get_middleware_is_still_counted(client, bought, settings):
    """A site's ConditionalGetMiddleware may answer 304 for the file: nothing widens, and the
    count stands (this process never sees the file response closed)."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.http.ConditionalGetMiddleware"]
    issued, file = bought
    url = press(client, issued, file)
    response, body = fetch(client, url, **{"If-None-Match": ETAG})
    assert (response.status_code, body) == (304, b"")
    assert counts(issued, file) == (1, 1)
    # The hand-off's next request rides on that count, within the budget as always.
    assert fetch(client, url)[1] == DATA
    assert counts(issued, file) == (1, 1)


def test_head_never_counts_and_the_get_after_it_does(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    for headers in ({}, {"Range": "bytes=0-9"}, {"Range": "bytes=100-"}):
        response, body = fetch(client, url, method="head", **headers)
        assert response.status_code in (200, 206) and body == b""
    assert counts(issued, file) == (0, 0)
    assert fetch(client, url, Range="bytes=100-")[1] == DATA[100:]
    assert counts(issued, file) == (1, 1)


def test_unsatisfiable_first_request_then_a_satisfiable_one_counts(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    assert fetch(client, url, Range=f"bytes={SIZE}-")[0].status_code == 416
    assert counts(issued, file) == (0, 0)
    assert fetch(client, url, Range=f"bytes={SIZE - 5}-")[1] == DATA[-5:]
    assert counts(issued, file) == (1, 1)


# Later requests: free within the window and the budget, then a new download ------------------


def test_resume_within_the_window_is_free_and_after_it_counts_like_a_new_download(client, bought):
    issued, file = bought
    unlimited(bought)
    url = press(client, issued, file)
    fetch(client, url, Range="bytes=0-999")
    assert fetch(client, url, Range="bytes=1000-1999")[1] == DATA[1000:2000]
    assert counts(issued, file) == (1, 1)
    # An hour and a second later (the count moved back rather than freezing the clock):
    DownloadHandoff.objects.update(counted_at=timezone.now() - timedelta(hours=1, seconds=1))
    assert fetch(client, url, Range="bytes=2000-")[1] == DATA[2000:]
    assert counts(issued, file) == (2, 2)
    # The new count opened a new window.
    assert fetch(client, url, Range="bytes=5-9")[1] == DATA[5:10]
    assert counts(issued, file) == (2, 2)


@override_settings(WAGTAIL_PAID_DELIVERY={"HANDOFF_WINDOW": 60})
def test_window_setting(client, bought):
    issued, file = bought
    unlimited(bought)
    url = press(client, issued, file)
    fetch(client, url, Range="bytes=0-0")
    DownloadHandoff.objects.update(counted_at=timezone.now() - timedelta(seconds=50))
    fetch(client, url, Range="bytes=1-")
    assert counts(issued, file) == (1, 1)
    DownloadHandoff.objects.update(counted_at=timezone.now() - timedelta(seconds=61))
    fetch(client, url, Range="bytes=1-")
    assert counts(issued, file) == (2, 2)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(1, [1, 2, 3]), (2, [1, 1, 2]), (3, [1, 1, 1])],
)
def test_byte_budget_setting(client, bought, budget, expected):
    """Three whole files on one hand-off: how many downloads they count."""
    issued, file = bought
    unlimited(bought)
    url = press(client, issued, file)
    seen = []
    with override_settings(WAGTAIL_PAID_DELIVERY={"HANDOFF_BYTE_BUDGET": budget}):
        for _ in range(3):
            assert fetch(client, url)[1] == DATA
            seen.append(counts(issued, file)[0])
    assert seen == expected


def test_the_budget_is_charged_with_what_each_response_promises(client, bought):
    issued, file = bought
    unlimited(bought)
    url = press(client, issued, file)
    fetch(client, url, Range="bytes=0-1")  # 2
    fetch(client, url, Range="bytes=-100")  # 102
    fetch(client, url, Range="bytes=10-", **{"If-Range": '"stale"'})  # 102 + SIZE: whole file
    assert state(url).bytes_promised == 102 + SIZE
    assert counts(issued, file) == (1, 1)
    fetch(client, url, Range="bytes=102-")  # SIZE - 102 more: exactly 2 x SIZE, still free
    assert counts(issued, file) == (1, 1)
    fetch(client, url, Range=f"bytes={SIZE - 1}-")  # one byte more: a new download
    assert counts(issued, file) == (2, 2)
    assert state(url).bytes_promised == 1
    promised = list(DownloadEvent.objects.order_by("pk").values_list("bytes_promised", "counted"))
    assert promised == [(2, True), (100, False), (SIZE, False), (SIZE - 102, False), (1, True)]


def test_conditional_headers_never_widen_a_counted_request(client, bought):
    """If-Range and friends change what a response is, never what it costs."""
    issued, file = bought
    unlimited(bought)
    url = press(client, issued, file)
    fetch(client, url, Range="bytes=0-1")  # 2
    assert fetch(client, url, Range="bytes=1-", **{"If-Range": ETAG})[0].status_code == 206
    assert counts(issued, file) == (1, 1)  # SIZE + 1 so far
    # Another stale validator: the whole file instead of the range, charged as the whole file.
    response, body = fetch(client, url, Range="bytes=1-", **{"If-Range": '"changed"'})
    assert (response.status_code, body) == (200, DATA)
    assert counts(issued, file) == (2, 2)  # 2 x SIZE + 1: past the budget, a new download


# Refused hand-offs serve nothing, ever -------------------------------------------------------


def test_hand_off_refused_at_the_limit_stays_refused_after_the_count_is_released(client, bought):
    issued, file = bought
    a, b = press(client, issued, file), press(client, issued, file)
    pending = client.get(a)  # counted, not a byte sent yet
    assert counts(issued, file) == (1, 1)
    response, body = fetch(client, b, Range="bytes=100-")
    assert response.status_code == 410 and DATA[100:200] not in body
    server_close(pending)  # a's response ended having sent nothing: its count is given back
    assert counts(issued, file) == (0, 0)
    for headers in ({}, {"Range": "bytes=100-"}, {"Range": "bytes=-10"}):
        response, body = fetch(client, b, **headers)
        assert response.status_code == 410, headers
        assert DATA[-10:] not in body
    assert fetch(client, b, method="head")[0].status_code == 410
    assert counts(issued, file) == (0, 0)
    assert state(b).refused_at is not None
    # A new press is a new hand-off, and the count given back lets it through.
    assert fetch(client, press(client, issued, file))[1] == DATA


def test_resume_past_the_budget_at_the_limit_is_refused_for_good(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    assert fetch(client, url)[1] == DATA
    assert fetch(client, url, Range="bytes=1-")[1] == DATA[1:]  # 2 x SIZE - 1: free
    response, body = fetch(client, url, Range="bytes=1-")  # would be a second download
    assert response.status_code == 410
    assert counts(issued, file) == (1, 1)
    # Even a tiny range, or after an editor resets the counter, it stays refused.
    assert fetch(client, url, Range=f"bytes={SIZE - 1}-")[0].status_code == 410
    FileDownloadCount.objects.update(count=0)
    assert fetch(client, url, Range=f"bytes={SIZE - 1}-")[0].status_code == 410
    assert fetch(client, url)[0].status_code == 410
    outcomes = list(DownloadEvent.objects.order_by("pk").values_list("outcome", flat=True))
    assert outcomes == ["served", "served"] + ["used_up"] * 4


def test_head_answers_as_the_get_would_without_refusing_the_hand_off(client, bought):
    issued, file = bought
    a, b = press(client, issued, file), press(client, issued, file)
    fetch(client, a)
    assert fetch(client, b, method="head")[0].status_code == 410  # a GET would be refused
    assert not DownloadHandoff.objects.filter(refused_at__isnull=False).exists()
    FileDownloadCount.objects.update(count=0)  # (an editor's reset)
    assert fetch(client, b)[1] == DATA  # HEAD refused nothing for good


# Giving a count back ------------------------------------------------------------------------


def test_a_count_free_requests_rode_on_is_not_given_back(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    pending = client.get(url)  # counted; the server has not taken a byte yet
    assert fetch(client, url, Range="bytes=1-")[1] == DATA[1:]  # rides on that count
    server_close(pending)  # sent nothing, but the hand-off's bytes left on its count
    assert counts(issued, file) == (1, 1)
    event = DownloadEvent.objects.filter(counted=True).get()
    assert (event.outcome, event.bytes_sent) == ("served", 0)


def test_a_hand_off_whose_count_was_given_back_counts_its_next_request(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    server_close(client.get(url))
    assert counts(issued, file) == (0, 0)
    assert state(url).counted_at is None and state(url).bytes_promised == 0
    assert fetch(client, url, Range="bytes=100-")[1] == DATA[100:]
    assert counts(issued, file) == (1, 1)


# Parallel requests (PostgreSQL: SQLite has no row locks) -------------------------------------


def _require_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite ignores select_for_update and serialises writers with a file lock, so it "
            "cannot show the row lock at work; run with DATABASE_URL=postgres://..."
        )


def _download(url, headers=None):
    response = Client().get(url, headers=headers or {})
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_requests_on_one_hand_off_at_the_limit(home):
    """Ten requests on one hand-off at once, limit one: the count and one free ride, no more."""
    _require_postgresql()
    product = ProductPageFactory(parent=home, files=1, download_limit=1)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    file = product.product_files[0]
    url = press(Client(), issued, file)
    size = file.file.size
    results = run_at_once([functools.partial(_download, url) for _ in range(10)])
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200] + [410] * 8
    assert sum(len(body) for status, body in results if status == 200) == 2 * size
    assert FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count == 1
    assert DownloadHandoff.objects.get().refused_at is not None


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_ranges_on_many_hand_offs_at_the_limit(home):
    """Every Range form, each on its own hand-off, all at once: only the limit gets bytes."""
    _require_postgresql()
    product = ProductPageFactory(parent=home, files=1, download_limit=2)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    file = product.product_files[0]
    forms = [None, "bytes=0-", "bytes=5-", "bytes=-5", "bytes=1-2,4-5", "bytes=x", "bytes=9-3"]
    calls = [
        functools.partial(_download, press(Client(), issued, file), {"Range": r} if r else None)
        for r in forms * 2
    ]
    results = run_at_once(calls)
    assert sorted(status for status, _ in results).count(410) == len(calls) - 2
    assert FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count == 2
    issued.link.refresh_from_db()
    assert issued.link.download_count == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_whole_files_on_one_unlimited_hand_off_count_by_the_budget(home):
    _require_postgresql()
    product = ProductPageFactory(parent=home, files=1, download_limit=0)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    file = product.product_files[0]
    url = press(Client(), issued, file)
    results = run_at_once([functools.partial(_download, url) for _ in range(10)])
    assert [status for status, _ in results] == [200] * 10
    # Each count carries two whole files (the budget): ten responses, five downloads.
    assert FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count == 5
