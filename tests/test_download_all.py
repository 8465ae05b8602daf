""" "Download all": a product's files as one stored ZIP, through the real URLs.

The archive is laid out from facts recorded at upload (size, CRC-32), so its size is known
before a byte is read and a Range is served by seeking into the member it starts in. It counts
as one download of each file, by the same hand-off rules as one file (tests/test_counting.py).
"""

from __future__ import annotations

import functools
import hashlib
import io
import secrets
import shutil
import subprocess
import zipfile
import zlib
from datetime import timedelta
from unittest import mock

import pytest
from django.core import signing
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.test_serving import fetch, server_close
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadLink, FileDownloadCount
from wagtail_paid_delivery.serving import zipstream
from wagtail_paid_delivery.storage import PrivateProductStorage

pytestmark = pytest.mark.django_db

FIRST = bytes(range(256)) * 400  # 100 KiB
SECOND = bytes(reversed(range(256))) * 800  # 200 KiB: more than three 64 KiB chunks
THIRD = b"third file\n" * 5000


@pytest.fixture
def product(home):
    product = ProductPageFactory(parent=home, title="Atlas of Maps", files=0)
    ProductFileFactory(page=product, title="Maps", file=ContentFile(FIRST, name="maps.bin"))
    ProductFileFactory(page=product, title="Atlas", file=ContentFile(SECOND, name="atlas.bin"))
    ProductFileFactory(page=product, title="Notes", file=ContentFile(THIRD, name="notes.txt"))
    return product


@pytest.fixture
def issued(product):
    return links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")


def press_all(client, issued) -> str:
    response = client.post(reverse("wagtail_paid_delivery:download_all", args=[issued.token]))
    assert response.status_code == 303, response.content
    return response["Location"]


def file_counts(issued) -> list[int]:
    files = links.product_files(issued.link)
    got = links.file_counts(issued.link)
    return [got.get(f.pk, 0) for f in files]


def whole(client, issued) -> bytes:
    response, body = fetch(client, press_all(client, issued))
    assert response.status_code == 200
    return body


# The archive ----------------------------------------------------------------------------------


def test_archive_opens_with_zipfile_and_every_member_matches(client, issued):
    url = press_all(client, issued)
    assert url.endswith("/all.zip") and "/d/h/" in url
    response, body = fetch(client, url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Length"] == str(len(body))
    assert response["Content-Disposition"] == 'attachment; filename="Atlas of Maps.zip"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert response["Cache-Control"] == "private, no-store"
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None  # every CRC checked against the bytes
    infos = archive.infolist()
    assert [i.filename for i in infos] == ["maps.bin", "atlas.bin", "notes.txt"]
    for info, data in zip(infos, [FIRST, SECOND, THIRD], strict=True):
        assert archive.read(info) == data
        assert zlib.crc32(data) == info.CRC
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_the_same_files_make_the_same_bytes_and_etag(client, issued):
    first_url, second_url = press_all(client, issued), press_all(client, issued)
    assert first_url != second_url  # a fresh hand-off per press
    first, first_body = fetch(client, first_url)
    second, second_body = fetch(client, second_url)
    assert first_body == second_body
    assert first["ETag"] == second["ETag"]
    assert first["ETag"].startswith('"zip-')


def test_etag_follows_the_members_checksums(client, issued, product):
    etag = fetch(client, press_all(client, issued))[0]["ETag"]
    notes = product.files.get(title="Notes")
    notes.file = ContentFile(b"new notes", name="notes.txt")
    notes.save()
    issued.link.download_limit = None
    issued.link.save(update_fields=["download_limit"])
    response, body = fetch(client, press_all(client, issued))
    assert response["ETag"] != etag
    assert zipfile.ZipFile(io.BytesIO(body)).read("notes.txt") == b"new notes"


def test_crc32_is_recorded_on_upload_and_remeasured_on_replace(product):
    maps = product.files.get(title="Maps")
    assert maps.crc32 == zlib.crc32(FIRST)
    maps.file = ContentFile(b"replaced", name="maps.bin")
    maps.save()
    maps.refresh_from_db()
    assert (maps.size, maps.crc32) == (8, zlib.crc32(b"replaced"))
    assert maps.sha256 == hashlib.sha256(b"replaced").hexdigest()


def test_a_file_stored_before_crc32s_is_measured_once_when_archived(client, issued, product):
    maps = product.files.get(title="Maps")
    type(maps).objects.filter(pk=maps.pk).update(crc32=None)
    body = whole(client, issued)
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
    maps.refresh_from_db()
    assert maps.crc32 == zlib.crc32(FIRST)


def test_the_migration_backfills_crc32_from_storage(product):
    from wagtail_paid_delivery.models.pages import backfill_crc32
    from wagtail_paid_delivery.product.models import ProductFile

    ProductFile.objects.update(crc32=None)
    backfill_crc32(ProductFile)
    assert sorted(ProductFile.objects.values_list("crc32", flat=True)) == sorted(
        zlib.crc32(data) for data in (FIRST, SECOND, THIRD)
    )


def test_two_files_with_the_same_name_get_distinct_entries(client, home):
    product = ProductPageFactory(parent=home, title="Twins", files=0)
    for data in (b"one", b"two", b"three"):
        ProductFileFactory(page=product, file=ContentFile(data, name="Guide.pdf"))
    ProductFileFactory(page=product, file=ContentFile(b"four", name="guide.PDF"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    archive = zipfile.ZipFile(io.BytesIO(whole(client, issued)))
    assert archive.namelist() == ["Guide.pdf", "Guide (2).pdf", "Guide (3).pdf", "guide (4).PDF"]
    assert [archive.read(n) for n in archive.namelist()] == [b"one", b"two", b"three", b"four"]


def test_unicode_names_are_utf8_with_the_flag_set(client, home):
    product = ProductPageFactory(parent=home, title="Cartes du monde", files=0)
    ProductFileFactory(page=product, file=ContentFile(b"carte", name="Carte_du_monde_été.pdf"))
    ProductFileFactory(page=product, file=ContentFile(b"plain", name="plain.txt"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    archive = zipfile.ZipFile(io.BytesIO(whole(client, issued)))
    unicode_entry, ascii_entry = archive.infolist()
    assert unicode_entry.filename == "Carte_du_monde_été.pdf"
    assert unicode_entry.flag_bits & 0x800
    assert not ascii_entry.flag_bits & 0x800
    assert archive.read(unicode_entry) == b"carte"


# Range, resume and HEAD -----------------------------------------------------------------------


def test_range_in_the_middle_of_the_second_member_matches_the_full_archive(client, issued):
    full = whole(client, issued)
    archive = zipfile.ZipFile(io.BytesIO(full))
    second = archive.infolist()[1]
    data_start = second.header_offset + 30 + len(second.filename.encode())
    start, end = data_start + 70_000, data_start + 150_000
    url = press_all(client, issued)
    response, body = fetch(client, url, Range=f"bytes={start}-{end}")
    assert response.status_code == 206
    assert body == full[start : end + 1] == SECOND[70_000:150_001]
    assert response["Content-Range"] == f"bytes {start}-{end}/{len(full)}"
    assert response["Content-Length"] == str(end - start + 1)


def test_a_resume_is_free_and_completes_the_archive(client, issued):
    url = press_all(client, issued)
    response, body = fetch(client, url)
    cut = 150_000
    etag = response["ETag"]
    response, rest = fetch(client, url, Range=f"bytes={cut}-", **{"If-Range": etag})
    assert response.status_code == 206
    assert body[:cut] + rest == body
    # One count per file for the whole thing: the resume rode on the first request's.
    assert file_counts(issued) == [1, 1, 1]
    issued.link.refresh_from_db()
    assert issued.link.download_count == 3
    counted = DownloadEvent.objects.filter(counted=True)
    assert counted.count() == 3 and DownloadEvent.objects.count() == 6


def test_if_range_with_another_etag_sends_the_whole_archive_which_counts_within_budget(
    client, issued
):
    url = press_all(client, issued)
    full = fetch(client, url)[1]
    response, body = fetch(client, url, Range="bytes=10-19", **{"If-Range": '"other"'})
    assert (response.status_code, body) == (200, full)
    # Budget: twice the archive; the second whole archive still rides on the first count.
    assert file_counts(issued) == [1, 1, 1]
    response, body = fetch(client, url)
    assert file_counts(issued) == [2, 2, 2]


def test_a_resume_after_the_window_counts_again(client, issued):
    url = press_all(client, issued)
    fetch(client, url)
    later = timezone.now() + timedelta(hours=2)
    with mock.patch("django.utils.timezone.now", return_value=later):
        response, _ = fetch(client, url, Range="bytes=100-")
    assert response.status_code == 206
    assert file_counts(issued) == [2, 2, 2]


def test_head_answers_as_the_get_would_and_counts_nothing(client, issued):
    url = press_all(client, issued)
    response, body = fetch(client, url, method="head")
    assert response.status_code == 200 and body == b""
    full = fetch(client, press_all(client, issued))[1]
    assert response["Content-Length"] == str(len(full))
    assert response["ETag"].startswith('"zip-')
    response, _ = fetch(client, url, method="head", Range="bytes=10-19")
    assert response.status_code == 206 and response["Content-Length"] == "10"
    assert DownloadEvent.objects.filter(outcome="head").count() == 6
    assert file_counts(issued) == [1, 1, 1]  # the one GET above


def test_unsatisfiable_range_is_416_and_counts_nothing(client, issued):
    url = press_all(client, issued)
    size = int(client.head(url)["Content-Length"])
    response, _ = fetch(client, url, Range=f"bytes={size}-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{size}"
    assert file_counts(issued) == [0, 0, 0]


def test_a_late_range_reads_no_earlier_member(client, issued, monkeypatch):
    """Seeking, not re-reading: a range in the last member reads only that member's bytes."""
    full = whole(client, issued)
    read: dict[str, int] = {}
    real_open = PrivateProductStorage.open

    class Counting(io.RawIOBase):
        def __init__(self, handle, name):
            self.handle, self.name = handle, name

        def read(self, size=-1):
            data = self.handle.read(size)
            read[self.name] = read.get(self.name, 0) + len(data)
            return data

        def seek(self, offset, whence=0):
            return self.handle.seek(offset, whence)

        def close(self):
            self.handle.close()
            super().close()

    def counting_open(self, name, mode="rb"):
        return Counting(real_open(self, name, mode), name.rsplit("/", 1)[-1])

    monkeypatch.setattr(PrivateProductStorage, "open", counting_open)
    data_end = len(full) - _tail(full)
    start = data_end - 1000  # the last 1000 bytes of the last member, then the directory
    response, body = fetch(client, press_all(client, issued), Range=f"bytes={start}-")
    assert response.status_code == 206
    assert body == full[start:]
    assert read == {"notes.txt": 1000}


def _tail(full: bytes) -> int:
    """Bytes after the last member's data: the central directory and its end record."""
    archive = zipfile.ZipFile(io.BytesIO(full))
    last = archive.infolist()[-1]
    return len(full) - (last.header_offset + 30 + len(last.filename.encode()) + last.file_size)


# Counting -------------------------------------------------------------------------------------


def test_counts_one_download_of_each_file(client, issued):
    whole(client, issued)
    assert file_counts(issued) == [1, 1, 1]
    served = DownloadEvent.objects.filter(outcome="served", counted=True)
    assert sorted(served.values_list("file_id", flat=True)) == sorted(
        f.pk for f in links.product_files(issued.link)
    )
    # Each file's event records its own share of the bytes; together, the archive.
    total = sum(served.values_list("bytes_sent", flat=True))
    assert total == int(
        fetch(client, press_all(client, issued), method="head")[0]["Content-Length"]
    )


def test_a_file_at_its_limit_is_left_out_of_the_next_archive(client, issued):
    issued.link.download_limit = 1
    issued.link.save(update_fields=["download_limit"])
    maps = links.product_files(issued.link)[0]
    single = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, maps.pk])
    )["Location"]
    fetch(client, single)
    archive = zipfile.ZipFile(io.BytesIO(whole(client, issued)))
    assert archive.namelist() == ["atlas.bin", "notes.txt"]
    assert file_counts(issued) == [1, 1, 1]
    # Everything used up: the button is refused, and the page offers no archive any more.
    response = client.post(reverse("wagtail_paid_delivery:download_all", args=[issued.token]))
    assert response.status_code == 410


def test_an_archive_refused_at_the_limit_serves_nothing_ever(client, issued):
    issued.link.download_limit = 1
    issued.link.save(update_fields=["download_limit"])
    url = press_all(client, issued)  # all three files, each with one download left
    atlas = links.product_files(issued.link)[1]
    fetch(
        client,
        client.post(reverse("wagtail_paid_delivery:download_file", args=[issued.token, atlas.pk]))[
            "Location"
        ],
    )
    response, _ = fetch(client, url)
    assert response.status_code == 410
    assert file_counts(issued) == [0, 1, 0]  # nothing more counted
    assert DownloadEvent.objects.filter(outcome="used_up").count() == 3
    FileDownloadCount.objects.filter(link=issued.link).update(count=0)
    response, _ = fetch(client, url)
    assert response.status_code == 410  # the refusal stands for that hand-off


def test_a_file_missing_from_storage_counts_nothing_and_says_which(client, issued, product):
    atlas = product.files.get(title="Atlas")
    atlas.file.storage.delete(atlas.file.name)
    response, body = fetch(client, press_all(client, issued))
    assert response.status_code == 503
    assert "Atlas" in body.decode() and "not been counted" in body.decode()
    assert file_counts(issued) == [0, 0, 0]
    assert DownloadEvent.objects.filter(outcome="missing_file").count() == 3


def test_a_response_closed_before_any_byte_gives_every_count_back(client, issued, rf):
    from django.urls import resolve

    url = press_all(client, issued)
    match = resolve(url)
    response = match.func(rf.get(url), **match.kwargs)
    assert file_counts(issued) == [1, 1, 1]
    server_close(response)
    assert file_counts(issued) == [0, 0, 0]


def test_a_revoked_link_refuses_the_archive(client, issued):
    url = press_all(client, issued)
    links.revoke_link(issued.link)
    response, _ = fetch(client, url)
    assert response.status_code == 410
    assert file_counts(issued) == [0, 0, 0]


@pytest.mark.parametrize("tamper", ["x", "garbage", None])
def test_a_forged_or_truncated_archive_handoff_is_a_plain_404(client, issued, tamper):
    url = press_all(client, issued)
    signed = url.split("/d/h/")[1].removesuffix("/all.zip")
    bad = "garbage" if tamper == "garbage" else (signed[:-3] if tamper is None else signed + "x")
    response = client.get(reverse("wagtail_paid_delivery:archive_handoff", args=[bad]))
    assert response.status_code == 404
    assert not DownloadEvent.objects.exists()


def test_a_single_file_handoff_signature_does_not_open_an_archive(client, issued):
    maps = links.product_files(issued.link)[0]
    single = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, maps.pk])
    )["Location"]
    signed = single.split("/d/h/")[1].rstrip("/")
    response = client.get(reverse("wagtail_paid_delivery:archive_handoff", args=[signed]))
    assert response.status_code == 404


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_offload_backends_still_stream_the_archive_through_django(client, issued):
    response, body = fetch(client, press_all(client, issued))
    assert response.status_code == 200 and "X-Accel-Redirect" not in response
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None


# The page -------------------------------------------------------------------------------------


def test_download_page_offers_download_all_with_the_archive_size(client, issued):
    page = client.get(issued.url)
    html = page.content.decode()
    assert reverse("wagtail_paid_delivery:download_all", args=[issued.token]) in html
    assert "Download all" in html


def test_a_product_with_one_file_has_no_download_all(client, home):
    product = ProductPageFactory(parent=home, files=1)
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    assert "Download all" not in client.get(issued.url).content.decode()


def test_get_on_the_button_changes_nothing(client, issued):
    response = client.get(reverse("wagtail_paid_delivery:download_all", args=[issued.token]))
    assert response.status_code == 405
    assert not DownloadEvent.objects.exists()
    assert DownloadLink.objects.get().download_count == 0


def test_logs_never_show_the_archive_handoff_or_the_token(client, issued):
    from wagtail_paid_delivery.log_filters import redact

    url = press_all(client, issued)
    signed = url.split("/d/h/")[1].removesuffix("/all.zip")
    button = reverse("wagtail_paid_delivery:download_all", args=[issued.token])
    assert signed not in redact(f'"GET {url} HTTP/1.1" 200')
    assert issued.token not in redact(f'"POST {button} HTTP/1.1" 303')


def test_another_unzip_tool_agrees(client, issued, tmp_path):
    """Info-ZIP's unzip, a second reader: every CRC tests clean."""
    unzip = shutil.which("unzip")
    if unzip is None:
        pytest.skip("unzip is not installed")
    target = tmp_path / "all.zip"
    target.write_bytes(whole(client, issued))
    result = subprocess.run(  # noqa: S603 (a fixed tool on a file this test wrote)
        [unzip, "-t", str(target)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout


def test_past_the_zip_limit_no_button_and_the_handoff_counts_nothing(client, issued, monkeypatch):
    url = press_all(client, issued)
    monkeypatch.setattr(zipstream, "MAX_ARCHIVE_SIZE", 100_000)
    assert "Download all" not in client.get(issued.url).content.decode()
    response, body = fetch(client, url)
    assert response.status_code == 503
    assert "too large for one ZIP" in body.decode()
    assert file_counts(issued) == [0, 0, 0]
    assert DownloadEvent.objects.filter(outcome="too_large").count() == 3


def test_the_desk_timeline_says_a_download_was_in_an_archive(admin_client, client, issued):
    whole(client, issued)
    url = reverse("wagtail_paid_delivery_purchases:inspect", args=[issued.link.purchase.pk])
    html = admin_client.get(url).content.decode()
    assert "in a “Download all” archive" in html


def _download(url, headers=None):
    response = Client().get(url, headers=headers or {})
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_parallel_archives_at_the_limit_only_the_limit_gets_bytes(home):
    """Six archive hand-offs and six single-file hand-offs at once, limit two: at most two
    downloads of any file, and an archive is all or nothing."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL (SQLite ignores select_for_update)")
    product = ProductPageFactory(parent=home, files=0, download_limit=2)
    for name, data in (("a.bin", FIRST), ("b.bin", SECOND)):
        ProductFileFactory(page=product, file=ContentFile(data, name=name))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    first = links.product_files(issued.link)[0]
    archives = [press_all(Client(), issued) for _ in range(6)]
    singles = [
        Client().post(
            reverse("wagtail_paid_delivery:download_file", args=[issued.token, first.pk])
        )["Location"]
        for _ in range(6)
    ]
    results = run_at_once([functools.partial(_download, url) for url in archives + singles])
    served = [status == 200 for status, _ in results]
    assert all(status in (200, 410) for status, _ in results)
    counts = links.file_counts(issued.link)
    assert counts[first.pk] == 2
    assert counts[first.pk] == sum(served[:6]) + sum(served[6:])
    second = links.product_files(issued.link)[1]
    assert counts.get(second.pk, 0) == sum(served[:6])
    for status, body in results[:6]:
        if status == 200:
            assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None


def test_forged_and_junk_archive_handoffs_write_nothing(client, issued, home):
    from tests.test_invalid_requests import assert_no_rows_written

    other = ProductPageFactory(parent=home, files=1)
    signed = press_all(client, issued).split("/d/h/")[1].removesuffix("/all.zip")
    payload = signing.loads(signed, salt=links.ARCHIVE_HANDOFF_SALT)
    salt = links.ARCHIVE_HANDOFF_SALT
    values = [
        "garbage",
        signed[:-1],
        signing.dumps(payload),  # our signature, another salt
        signing.dumps(payload, salt=links.HANDOFF_SALT),  # a single file's salt
        signing.dumps(payload, salt=salt, key="another-secret-key"),
        signing.dumps({**payload, "l": 10**9}, salt=salt),  # a link that does not exist
        signing.dumps({**payload, "fs": [other.product_files[0].pk]}, salt=salt),
        signing.dumps({**payload, "fs": payload["fs"] * 2}, salt=salt),  # a file twice
        signing.dumps({**payload, "fs": []}, salt=salt),
        signing.dumps({**payload, "n": "x" * 40}, salt=salt),
        signing.dumps({"l": "x", "fs": None, "n": 1}, salt=salt),
        signing.dumps({"l": 1, "fs": "abc", "n": "n"}, salt=salt),
        signing.dumps([1, 2, 3], salt=salt),
    ]
    requests = []
    for value in values:
        path = reverse("wagtail_paid_delivery:archive_handoff", args=[value])
        requests += [("get", path, {}), ("head", path, {})]
    requests.append(("post", f"/shop/d/{secrets.token_urlsafe(32)}/all/", {}))
    answers = assert_no_rows_written(requests)
    assert {status for _, _, status in answers} == {404}, answers


def test_the_before_serve_hook_may_answer_instead_and_nothing_counts(client, issued):
    from django.http import HttpResponse
    from wagtail import hooks

    def refuse(request, link, file):
        if file.title == "Atlas":
            return HttpResponse("not today", status=403)
        return None

    with hooks.register_temporarily("before_serve_paid_download", refuse):
        response, body = fetch(client, press_all(client, issued))
    assert (response.status_code, body) == (403, b"not today")
    assert file_counts(issued) == [0, 0, 0]
    assert DownloadEvent.objects.filter(outcome="hook").count() == 3
