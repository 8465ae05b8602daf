"""Serving files through hand-off URLs: Range, HEAD, counting, headers, memory, concurrency."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tracemalloc
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils.http import http_date
from wagtail import hooks

from tests.concurrency import run_at_once
from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import links, serving
from wagtail_paid_delivery.models import DownloadEvent, DownloadLink, FileDownloadCount, Purchase
from wagtail_paid_delivery.serving import backends, ranges
from wagtail_paid_delivery.signals import download_served

pytestmark = pytest.mark.django_db

DATA = bytes(range(256)) * 800  # 200 KiB: more than three 64 KiB chunks
SIZE = len(DATA)


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Atlas", files=0)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(DATA, name="atlas.bin"))
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, file, purchase


def press(client, issued, file) -> str:
    response = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    )
    assert response.status_code == 303, response.content
    return response["Location"]


def fetch(client, url, method="get", **headers):
    response = getattr(client, method)(url, headers=headers)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def server_close(response):
    """Close a response as a WSGI server does, keeping the test's database connection open.

    (Closing fires request_finished, whose close_old_connections would end the test transaction;
    the test client's own wrapper re-connects that receiver halfway through a close.)
    """
    with mock.patch.object(connection, "close_if_unusable_or_obsolete"):
        response.close()


def counts(issued, file):
    issued.link.refresh_from_db()
    row = FileDownloadCount.objects.filter(link=issued.link, file_id=file.pk).first()
    return (row.count if row else 0), issued.link.download_count


# The bytes and the headers ------------------------------------------------------------------


def test_whole_file_download_with_every_header(client, bought):
    issued, file, _ = bought
    response, body = fetch(client, press(client, issued, file))
    assert response.status_code == 200
    assert body == DATA
    assert response["Content-Length"] == str(SIZE)
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"] == 'attachment; filename="atlas.bin"'
    assert response["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert response["Last-Modified"]
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Robots-Tag"] == "noindex"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "no-referrer"
    assert counts(issued, file) == (1, 1)
    event = DownloadEvent.objects.get()
    assert (event.outcome, event.counted, event.bytes_sent) == ("served", True, SIZE)
    assert event.link == issued.link and event.file_id == file.pk and event.handoff


def test_whole_file_response_keeps_the_sendfile_path(client, bought, rf):
    from django.urls import resolve

    issued, file, _ = bought
    url = press(client, issued, file)
    # Called directly: the test client rewraps streaming content, a WSGI server does not.
    match = resolve(url)
    response = match.func(rf.get(url), **match.kwargs)
    # A FileResponse over a real file descriptor: WSGI servers hand it to wsgi.file_wrapper.
    assert response.file_to_stream is not None
    assert isinstance(response.file_to_stream.fileno(), int)
    server_close(response)
    # Once the server took the descriptor, this process cannot tell what was sent: it stays
    # counted, with the bytes unknown.
    assert counts(issued, file) == (1, 1)
    assert DownloadEvent.objects.get().bytes_sent is None


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-99", 206, DATA[:100], f"bytes 0-99/{SIZE}"),
        ("bytes=100-199", 206, DATA[100:200], f"bytes 100-199/{SIZE}"),
        ("bytes=-500", 206, DATA[-500:], f"bytes {SIZE - 500}-{SIZE - 1}/{SIZE}"),
        ("bytes=100-", 206, DATA[100:], f"bytes 100-{SIZE - 1}/{SIZE}"),
        ("bytes=0-", 206, DATA, f"bytes 0-{SIZE - 1}/{SIZE}"),
        (f"bytes=-{SIZE * 2}", 206, DATA, f"bytes 0-{SIZE - 1}/{SIZE}"),
        (
            f"bytes={SIZE - 10}-{SIZE * 5}",
            206,
            DATA[-10:],
            f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}",
        ),
        # Ignored (RFC 9110 allows it): the whole file.
        ("bytes=abc", 200, DATA, None),
        ("bytes=200-100", 200, DATA, None),
        ("items=0-10", 200, DATA, None),
        ("bytes=0-1,5-6", 200, DATA, None),  # multi-range: served whole
    ],
)
def test_ranges(client, bought, header, status, expected, content_range):
    issued, file, _ = bought
    response, body = fetch(client, press(client, issued, file), Range=header)
    assert response.status_code == status
    assert body == expected
    assert response["Content-Length"] == str(len(expected))
    assert response.get("Content-Range") == content_range
    # The first request served on a hand-off counts, whatever range it asks for.
    assert counts(issued, file) == (1, 1)
    event = DownloadEvent.objects.get()
    assert event.range_header == header and event.counted is True
    assert event.bytes_sent == event.bytes_promised == len(expected)


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
def test_unsatisfiable_range_is_416_and_counts_nothing(client, bought, header):
    issued, file, _ = bought
    response, body = fetch(client, press(client, issued, file), Range=header)
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert counts(issued, file) == (0, 0)
    assert DownloadEvent.objects.get().outcome == "not_satisfiable"


def test_if_range(client, bought):
    issued, file, _ = bought
    url = press(client, issued, file)
    first = client.head(url)
    etag, modified = first["ETag"], first["Last-Modified"]
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": etag})
    assert (response.status_code, body) == (206, DATA[10:20])
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": modified})
    assert (response.status_code, body) == (206, DATA[10:20])
    # The file changed since (another validator): the whole file, which counts.
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": '"other"'})
    assert (response.status_code, body) == (200, DATA)
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": http_date(0)})
    assert (response.status_code, body) == (200, DATA)
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": "W/" + etag})
    assert response.status_code == 200
    # One hand-off: the first 206 counted; the next responses rode on it until the fourth, a
    # second whole file, took the hand-off past its budget (twice the file) and counted again.
    assert counts(issued, file) == (2, 2)


def test_head_never_counts(client, bought):
    issued, file, _ = bought
    url = press(client, issued, file)
    response, body = fetch(client, url, method="head")
    assert response.status_code == 200 and body == b""
    assert response["Content-Length"] == str(SIZE)
    assert response["ETag"] and response["Accept-Ranges"] == "bytes"
    response, _ = fetch(client, url, method="head", Range="bytes=0-9")
    assert response.status_code == 206 and response["Content-Length"] == "10"
    assert counts(issued, file) == (0, 0)
    assert list(DownloadEvent.objects.values_list("outcome", "counted")) == [("head", False)] * 2


def test_hand_off_refuses_other_methods(client, bought):
    issued, file, _ = bought
    assert client.post(press(client, issued, file)).status_code == 405


def test_non_ascii_filename_gets_rfc_6266_header_with_ascii_fallback(client, home):
    product = ProductPageFactory(parent=home, files=0)
    file = ProductFileFactory(page=product, file=ContentFile(b"x", name="résumé-日本.pdf"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    response, _ = fetch(client, press(client, issued, file))
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == (
        'attachment; filename="resume-.pdf"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9-%E6%97%A5%E6%9C%AC.pdf"
    )


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("plain.zip", 'attachment; filename="plain.zip"'),
        ('a"b\\c.txt', "attachment; filename=\"a_b_c.txt\"; filename*=UTF-8''a%22b%5Cc.txt"),
        (
            "日本.pdf",
            "attachment; filename=\"download.pdf\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.pdf",
        ),
        ("a b;c.txt", "attachment; filename=\"a b_c.txt\"; filename*=UTF-8''a%20b%3Bc.txt"),
    ],
)
def test_content_disposition(name, header):
    assert ranges.content_disposition(name) == header


def test_events_keep_a_truncated_ip_and_user_agent(client, bought):
    issued, file, _ = bought
    url = press(client, issued, file)
    response = client.get(url, REMOTE_ADDR="203.0.113.77", headers={"User-Agent": "x" * 400})
    b"".join(response.streaming_content)
    client.head(url, REMOTE_ADDR="2001:db8:abcd:12::1")
    v4, v6 = DownloadEvent.objects.order_by("pk")
    assert v4.ip_address == "203.0.113.0" and len(v4.user_agent) == 255
    assert v6.ip_address == "2001:db8:abcd::"


# Counting -----------------------------------------------------------------------------------


def test_resuming_does_not_count(client, bought):
    issued, file, _ = bought
    url = press(client, issued, file)
    _, first = fetch(client, url, Range="bytes=0-999")
    _, rest = fetch(client, url, Range="bytes=1000-")
    assert first + rest == DATA
    assert counts(issued, file) == (1, 1)


def test_probe_then_fetch_rides_on_one_count_until_the_budget_is_spent(client, bought):
    issued, file, _ = bought
    url = press(client, issued, file)
    fetch(client, url, Range="bytes=0-1")  # a player's probe: counted
    fetch(client, url)  # then the whole file: 2 + SIZE bytes promised, within 2 x SIZE
    assert counts(issued, file) == (1, 1)
    fetch(client, url)  # another whole file would pass the budget: a new download
    assert counts(issued, file) == (2, 2)
    fetch(client, url, Range="bytes=0-10")  # rides on the new count
    assert counts(issued, file) == (2, 2)


def test_a_second_button_press_is_a_new_hand_off_that_counts(client, bought):
    issued, file, _ = bought
    fetch(client, press(client, issued, file))
    fetch(client, press(client, issued, file))
    assert counts(issued, file) == (2, 2)


def test_limit_is_per_file_and_refuses_with_410(client, home):
    product = ProductPageFactory(parent=home, files=2, download_limit=2)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    first, second = product.product_files
    for _ in range(2):
        assert fetch(client, press(client, issued, first))[0].status_code == 200
    url = reverse("wagtail_paid_delivery:download_file", args=[issued.token, first.pk])
    assert client.post(url).status_code == 410  # the button knows
    assert fetch(client, press(client, issued, second))[0].status_code == 200
    issued.link.refresh_from_db()
    assert issued.link.download_count == 3


def test_hand_off_minted_before_the_limit_is_refused_at_the_limit(client, home):
    product = ProductPageFactory(parent=home, files=1, download_limit=1)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    file = product.product_files[0]
    a, b = press(client, issued, file), press(client, issued, file)
    assert fetch(client, a)[0].status_code == 200
    response, body = fetch(client, b)
    assert response.status_code == 410
    assert b"download limit" in body
    assert DownloadEvent.objects.filter(outcome="used_up", handoff__isnull=False).count() == 1
    # A resume on the counted hand-off rides on its count (within its window and byte budget).
    response, body = fetch(client, a, Range="bytes=5-")
    assert response.status_code == 206


def test_nothing_sent_releases_the_count(client, bought):
    issued, file, _ = bought
    response = client.get(press(client, issued, file))
    assert counts(issued, file) == (1, 1)  # reserved before the first byte
    server_close(response)  # the server gave up before taking a chunk
    assert counts(issued, file) == (0, 0)
    event = DownloadEvent.objects.get()
    assert (event.outcome, event.counted, event.bytes_sent) == ("not_sent", False, 0)


def test_an_interrupted_download_that_sent_bytes_stays_counted(client, bought):
    issued, file, _ = bought
    response = client.get(press(client, issued, file), headers={"Range": "bytes=0-"})
    chunks = iter(response.streaming_content)
    next(chunks)
    next(chunks)  # asking for the second chunk means the first was written
    server_close(response)
    assert counts(issued, file) == (1, 1)
    assert DownloadEvent.objects.get().bytes_sent == backends.CHUNK_SIZE


def test_disputed_purchase_pauses_and_restored_purchase_resumes(client, bought):
    issued, file, purchase = bought
    url = press(client, issued, file)
    Purchase.objects.filter(pk=purchase.pk).update(status="disputed")
    response, body = fetch(client, url)
    assert response.status_code == 410
    assert DownloadEvent.objects.get().outcome == "not_paid"
    Purchase.objects.filter(pk=purchase.pk).update(status="paid")
    response, body = fetch(client, url)
    assert response.status_code == 200 and body == DATA
    assert counts(issued, file) == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        lambda link: links.revoke_link(link),
        lambda link: DownloadLink.objects.filter(pk=link.pk).update(
            expires_at=link.created_at - timedelta(seconds=1)
        ),
    ],
    ids=["revoked", "expired"],
)
def test_hand_off_dies_with_its_link(client, bought, change):
    issued, file, _ = bought
    url = press(client, issued, file)
    change(issued.link)
    assert client.get(url).status_code == 410
    assert client.get(url, headers={"Range": "bytes=100-"}).status_code == 410
    assert counts(issued, file) == (0, 0)


# Tampering ----------------------------------------------------------------------------------


def test_tampered_truncated_and_foreign_hand_offs_are_plain_404s(client, bought, home):
    issued, file, _ = bought
    url = press(client, issued, file)
    signed = url.split("/d/h/")[1].rstrip("/")
    other_product = ProductPageFactory(parent=home, files=1)
    other_file = other_product.product_files[0]
    other = links.issue_link(PurchaseFactory(paid=True, product=other_product), reason="webhook")
    payload = signing.loads(signed, salt=links.HANDOFF_SALT)
    candidates = [
        signed[:-1],
        signed[:-3] + ("AAA" if not signed.endswith("AAA") else "BBB"),
        signed + "x",
        # Signed by us but not for hand-offs (another salt):
        signing.dumps(payload),
        # Payload edited to point at another link: the signature no longer matches.
        signing.dumps({**payload, "l": other.link.pk}, salt="x"),
        # Our own signature for this link and another product's file (as if minted by a bug):
        signing.dumps({**payload, "f": other_file.pk}, salt=links.HANDOFF_SALT),
        # A link that does not exist:
        signing.dumps({**payload, "l": 10**9}, salt=links.HANDOFF_SALT),
    ]
    for value in candidates:
        response = client.get(f"/shop/d/h/{value}/")
        assert response.status_code == 404, value
        assert b"Atlas" not in response.content
    for path in (
        f"/shop/d/h/{signed}/../",
        f"/shop/d/h/..%2F{signed}/",
        f"/shop/d/h/{signed}%2F..%2F/",
        "/shop/d/h/../../etc/passwd/",
        "/shop/d/h/",
    ):
        assert client.get(path).status_code == 404, path
    assert counts(issued, file) == (0, 0)
    # A made-up hand-off is a 404 that records nothing (issue 11: garbage grows no table).
    assert not DownloadEvent.objects.exists()


# Storage trouble, hooks and signals ---------------------------------------------------------


def test_missing_file_is_a_clear_error_that_counts_nothing(client, bought, caplog):
    issued, file, _ = bought
    url = press(client, issued, file)
    os.remove(file.file.path)
    with caplog.at_level(logging.ERROR, logger="wagtail_paid_delivery.serving"):
        response = client.get(url)
    assert response.status_code == 503
    assert b"temporarily unavailable" in response.content
    assert b"notified" in response.content
    assert response["Cache-Control"] == "private, no-store"
    assert any(
        r.levelno == logging.ERROR and file.file.name in r.getMessage() for r in caplog.records
    )
    assert counts(issued, file) == (0, 0)
    assert DownloadEvent.objects.get().outcome == "missing_file"


def test_before_serve_hook_may_answer_instead(client, bought):
    from django.http import HttpResponse

    issued, file, _ = bought
    seen = []

    def hook(request, link, product_file):
        seen.append((link.pk, product_file.pk))
        return HttpResponse("maintenance", status=503)

    with hooks.register_temporarily(serving.BEFORE_SERVE_HOOK, hook):
        response = client.get(press(client, issued, file))
    assert (response.status_code, response.content) == (503, b"maintenance")
    assert seen == [(issued.link.pk, file.pk)]
    assert counts(issued, file) == (0, 0)
    assert DownloadEvent.objects.get().outcome == "hook"


def test_hook_returning_nothing_lets_the_download_through(client, bought):
    issued, file, _ = bought
    with hooks.register_temporarily(serving.BEFORE_SERVE_HOOK, lambda request, link, f: None):
        assert fetch(client, press(client, issued, file))[1] == DATA


def test_download_served_signal(client, bought):
    issued, file, _ = bought
    received = []

    def receiver(sender, request, link, file, **kwargs):
        received.append((link.pk, file.pk, request.method))

    download_served.connect(receiver)
    try:
        fetch(client, press(client, issued, file))
    finally:
        download_served.disconnect(receiver)
    assert received == [(issued.link.pk, file.pk, "GET")]


# Size and concurrency -----------------------------------------------------------------------


@pytest.fixture
def sparse_gib(home):
    relative = "products/sparse/big.bin"
    path = Path(settings.PRIVATE_STORAGE_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: a gibibyte of zeros that takes no disk
    product = ProductPageFactory(parent=home, files=0, download_limit=0)
    file = ProductFileFactory(page=product, file=relative, size=1 << 30, sha256="")
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    yield issued, file
    path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("range_header", [None, "bytes=1-"], ids=["whole", "range"])
def test_one_gib_streams_in_bounded_memory(client, sparse_gib, range_header):
    issued, file = sparse_gib
    url = press(client, issued, file)
    headers = {"Range": range_header} if range_header else {}
    tracemalloc.start()
    try:
        response = client.get(url, headers=headers)
        total = 0
        for chunk in response.streaming_content:
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == (1 << 30) - (1 if range_header else 0)
    assert peak < 50 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    assert DownloadEvent.objects.get().bytes_sent == total


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_requests_at_the_limit_cannot_both_pass(home):
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite ignores select_for_update and serialises writers with a file lock, so it "
            "cannot show the row lock at work; run with DATABASE_URL=postgres://..."
        )
    product = ProductPageFactory(parent=home, files=1, download_limit=2)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    file = product.product_files[0]
    setup_client = Client()
    urls = [press(setup_client, issued, file) for _ in range(10)]

    def download(url):
        response = Client().get(url)
        if response.streaming:
            b"".join(response.streaming_content)
        return response.status_code

    statuses = run_at_once([functools.partial(download, url) for url in urls])
    assert sorted(statuses) == [200, 200] + [410] * 8
    assert FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count == 2
    issued.link.refresh_from_db()
    assert issued.link.download_count == 2
    assert DownloadEvent.objects.filter(outcome="used_up").count() == 8
