"""Offload backends (SERVE_BACKEND): the headers each sends; checks and counting stay Django's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import checks
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.test import override_settings
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.test_serving import server_close
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadEvent, DownloadLink, FileDownloadCount
from wagtail_paid_delivery.serving import backends

pytestmark = pytest.mark.django_db

DATA = b"0123456789" * 1000

SECURITY_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def backend(name, **extra):
    return override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": name, **extra})


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Atlas", files=0, download_limit=2)
    file = ProductFileFactory(
        page=product, title="Atlas", file=ContentFile(DATA, name="star atlas é.pdf")
    )
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, file


def press(client, issued, file) -> str:
    url = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    response = client.post(url)
    assert response.status_code == 303
    return response["Location"]


def count(issued, file):
    row = FileDownloadCount.objects.filter(link=issued.link, file_id=file.pk).first()
    return row.count if row else 0


def assert_file_headers(response):
    for name, value in SECURITY_HEADERS.items():
        assert response[name] == value, name
    assert response["Content-Disposition"].startswith('attachment; filename="star')
    assert "filename*=UTF-8''star" in response["Content-Disposition"]
    assert "atlas_%C3%A9.pdf" in response["Content-Disposition"]


@backend("nginx")
def test_nginx_sends_x_accel_redirect_and_the_headers_and_counts(client, bought):
    issued, file = bought
    response = client.get(press(client, issued, file))
    assert response.status_code == 200
    assert response.content == b""  # nginx sends the bytes
    name = file.file.name
    assert name.startswith("products/") and "é" in name
    assert response["X-Accel-Redirect"] == "/_paid_files/" + name.replace("é", "%C3%A9")
    assert response["X-Accel-Expires"] == "0"
    assert response["Content-Type"] == "application/pdf"
    assert_file_headers(response)
    server_close(response)
    # Counted at request time, and kept: the app cannot see that nothing was sent.
    assert count(issued, file) == 1
    event = DownloadEvent.objects.get()
    assert (event.outcome, event.counted, event.bytes_sent) == ("served", True, None)


@backend("nginx", NGINX_INTERNAL_PREFIX="protected")
def test_nginx_prefix_is_normalised(client, bought):
    issued, file = bought
    response = client.get(press(client, issued, file))
    assert response["X-Accel-Redirect"].startswith("/protected/products/")


@backend("nginx")
def test_nginx_first_request_counts_whatever_its_range_and_head_never_counts(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    head = client.head(url)
    assert head.status_code == 200 and "X-Accel-Redirect" not in head
    assert head["Content-Length"] == str(len(DATA))
    assert count(issued, file) == 0
    # 416 is still Django's, and counts nothing.
    assert client.get(url, headers={"Range": "bytes=999999-"}).status_code == 416
    assert count(issued, file) == 0
    # The first request served counts, though it starts after byte 0 (nginx answers 206).
    response = client.get(url, headers={"Range": "bytes=100-"})
    assert response.status_code == 200 and "X-Accel-Redirect" in response
    assert count(issued, file) == 1
    # A resume nginx cannot be trusted with (it starts at byte 0) counts like a new download.
    client.get(url)
    assert count(issued, file) == 2
    # At the limit: refused, by the button and by a hand-off pressed before.
    third = client.post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    )
    assert third.status_code == 410


@pytest.mark.parametrize("name", ["nginx", "apache"])
@pytest.mark.parametrize(
    ("headers", "free"),
    [
        ({"Range": "bytes=100-"}, True),
        ({"Range": "bytes=100-199"}, True),
        ({"Range": "bytes=100-999999"}, True),
        ({"Range": "bytes=-100"}, True),
        ({}, False),
        ({"Range": "bytes=0-"}, False),
        ({"Range": "bytes=0-99"}, False),
        ({"Range": f"bytes=-{len(DATA)}"}, False),  # a suffix that is the whole file
        ({"Range": "bytes=100-,200-"}, False),
        ({"Range": "bytes=100-199,0-99"}, False),
        ({"Range": "bytes= 100-"}, False),  # nginx skips the space; not vouched for
        ({"Range": "bytes=0100-"}, False),
        ({"Range": "BYTES=100-"}, False),
        ({"Range": "bytes=200-100"}, False),
        ({"Range": "items=100-"}, False),
        ({"Range": "bytes=100-", "If-Range": '"whatever"'}, False),
        # The app's own ETag: the app would send the range, nginx compares its own and would
        # send the whole file.
        ({"Range": "bytes=-1", "If-Range": f'"{hashlib.sha256(DATA).hexdigest()}"'}, False),
        ({"Range": "bytes=100-", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"}, False),
    ],
)
def test_offload_follow_up_is_free_only_for_a_plain_range_after_byte_0(
    client, bought, name, headers, free
):
    """The server reads Range and If-Range itself: the app frees only what it can predict."""
    issued, file = bought
    with backend(name):
        url = press(client, issued, file)
        client.get(url, headers={"Range": "bytes=0-99"})
        assert count(issued, file) == 1
        response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert ("X-Accel-Redirect" if name == "nginx" else "X-Sendfile") in response
    assert count(issued, file) == (1 if free else 2)
    event = DownloadEvent.objects.order_by("pk").last()
    assert event.counted is not free


@backend("nginx")
def test_offload_follow_ups_spend_the_byte_budget(client, bought):
    issued, file = bought
    url = press(client, issued, file)
    for expected in (1, 1, 2):  # (len - 1) x 3 is past 2 x len
        response = client.get(url, headers={"Range": "bytes=1-"})
        assert "X-Accel-Redirect" in response
        assert count(issued, file) == expected
    response = client.get(url, headers={"Range": "bytes=1-"})  # rides on the second count
    assert count(issued, file) == 2
    assert client.get(url).status_code == 410  # a third download: refused for good
    assert client.get(url, headers={"Range": "bytes=1-"}).status_code == 410


@backend("apache")
def test_apache_sends_x_sendfile_with_the_absolute_path(client, bought):
    issued, file = bought
    response = client.get(press(client, issued, file))
    assert response.status_code == 200 and response.content == b""
    path = Path(response["X-Sendfile"])
    assert path.is_absolute() and path.read_bytes() == DATA
    assert path == Path(file.file.path)
    assert_file_headers(response)
    assert count(issued, file) == 1


class SigningStorage(FileSystemStorage):
    """Stands in for django-storages' S3Storage: url() presigns with expire and parameters."""

    calls: list[dict] = []

    def url(self, name, parameters=None, expire=None, http_method=None):
        SigningStorage.calls.append({"parameters": parameters, "expire": expire})
        query = {"X-Amz-Expires": str(expire), "X-Amz-Signature": "f" * 64}
        for key, value in (parameters or {}).items():
            query[f"response-{key}"] = value
        from urllib.parse import urlencode

        return f"https://bucket.s3.example/{name}?{urlencode(query)}"


class PlainStorage(FileSystemStorage):
    """A storage that cannot presign: url() takes no expire."""

    def url(self, name):
        return f"https://cdn.example/{name}"


@pytest.fixture
def remote_bought(home, tmp_path):
    def make(storage_class):
        storage = storage_class(location=str(tmp_path))
        product = ProductPageFactory(parent=home, title="Atlas", files=0)
        file = ProductFileFactory(page=product, title="Atlas", file="remote/star atlas é.pdf")
        (tmp_path / "remote").mkdir(exist_ok=True)
        (tmp_path / "remote" / "star atlas é.pdf").write_bytes(DATA)
        file.file.storage = storage
        issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
        return issued, file, storage

    return make


def use_file(monkeypatch, file):
    """Hand-offs serve this instance of the file (whose storage the test replaced)."""
    find = links.find_handoff
    monkeypatch.setattr(links, "find_handoff", lambda ticket: (find(ticket)[0], file))


@pytest.mark.parametrize("name", ["s3", "presigned"])
def test_presigned_redirect_lives_seconds_and_names_the_file(
    client, remote_bought, monkeypatch, name
):
    issued, file, storage = remote_bought(SigningStorage)
    use_file(monkeypatch, file)
    SigningStorage.calls.clear()
    with backend(name, PRESIGNED_URL_LIFETIME=20):
        response = client.get(press(client, issued, file))
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.netloc == "bucket.s3.example"
    query = parse_qs(location.query)
    assert query["X-Amz-Expires"] == ["20"]
    assert query["response-ResponseContentDisposition"][0].startswith("attachment;")
    assert query["response-ResponseContentType"] == ["application/pdf"]
    assert SigningStorage.calls[0]["expire"] == 20
    assert response["Cache-Control"] == "private, no-store"
    assert response["Referrer-Policy"] == "no-referrer"
    assert count(issued, file) == 1


def test_every_presigned_redirect_counts(client, remote_bought, monkeypatch):
    """The storage serves any range, any number of times, while the URL lives."""
    issued, file, storage = remote_bought(SigningStorage)
    use_file(monkeypatch, file)
    with backend("s3"):
        url = press(client, issued, file)
        for n, headers in enumerate(
            [{"Range": "bytes=100-"}, {"Range": "bytes=100-199"}, {"Range": "bytes=-1"}, {}],
            start=1,
        ):
            response = client.get(url, headers=headers)
            assert response.status_code == 302
            assert count(issued, file) == n
        head = client.head(url)
        assert head.status_code == 200 and "Location" not in head
        assert count(issued, file) == 4
        assert client.get(url).status_code == 302  # the fifth of DOWNLOAD_LIMIT's five
        assert client.get(url).status_code == 410
    events = DownloadEvent.objects.order_by("pk").values_list("outcome", "counted")
    assert [e for e in events if e[0] == "served"] == [("served", True)] * 5


def test_a_storage_that_cannot_presign_is_refused_before_counting(
    client, remote_bought, monkeypatch
):
    issued, file, storage = remote_bought(PlainStorage)
    use_file(monkeypatch, file)
    with backend("s3"):
        response = client.get(press(client, issued, file))
    assert response.status_code == 503
    assert count(issued, file) == 0
    assert DownloadEvent.objects.get().outcome == "missing_file"


def test_default_backend_is_django(settings):
    assert isinstance(backends.get_backend(), backends.DjangoBackend)
    assert type(backends.get_backend()) is backends.DjangoBackend


@pytest.mark.parametrize(
    "overrides, error_id",
    [
        ({"SERVE_BACKEND": "lighttpd"}, "wagtail_paid_delivery.E020"),
        (
            {"SERVE_BACKEND": "nginx", "NGINX_INTERNAL_PREFIX": "files"},
            "wagtail_paid_delivery.E021",
        ),
        ({"SERVE_BACKEND": "s3", "PRESIGNED_URL_LIFETIME": 3600}, "wagtail_paid_delivery.E022"),
        ({"RESEND_RATE_LIMIT": 10}, "wagtail_paid_delivery.E023"),
    ],
)
def test_bad_delivery_settings_are_system_check_errors(overrides, error_id):
    with override_settings(WAGTAIL_PAID_DELIVERY=overrides):
        ids = [m.id for m in checks.run_checks()]
    assert error_id in ids


@pytest.mark.parametrize("name", ["django", "nginx", "apache", "s3", "presigned"])
def test_known_backends_pass_the_checks(name):
    with override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": name}):
        ids = [m.id for m in checks.run_checks()]
    assert not [i for i in ids if i.startswith("wagtail_paid_delivery.E02")]
