"""Downloads through a real nginx in front of the app (SERVE_BACKEND "nginx").

nginx runs as a non-daemon subprocess with a generated configuration: ``location /`` proxies to
pytest-django's live server, and an ``internal`` location aliases PRIVATE_STORAGE_ROOT. The
configuration is the one the README gives site owners (plus temp paths for an unprivileged run).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.conftest import require_executable
from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import links
from wagtail_paid_delivery.log_filters import RedactTokensFilter
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadHandoff,
    DownloadLink,
    FileDownloadCount,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

DATA = bytes(range(256)) * 1200  # 300 KiB

#: The site-owner configuration (README), formatted with the paths and ports of this run.
SITE_CONFIG = """
    {log_config}

    server {{
        listen 127.0.0.1:{port};
        access_log {tmp}/access.log wpd_redacted;

        location /_paid_files/ {{
            internal;
            alias {root}/;
            # nginx does not pass these from the app's X-Accel-Redirect response by itself.
            add_header X-Content-Type-Options $upstream_http_x_content_type_options always;
            add_header Referrer-Policy $upstream_http_referrer_policy always;
            add_header Content-Security-Policy $upstream_http_content_security_policy always;
            add_header X-Robots-Tag $upstream_http_x_robots_tag always;
        }}

        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""


def readme_log_config() -> str:
    """The README's access-log configuration (its maps and log_format), verbatim."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("# An access log without tokens", 1)[1].split("\nserver {", 1)[0]
    return "# An access log without tokens" + block


MAIN_CONFIG = """
{user}
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include {mime_types};
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    {site}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(live_server, tmp_path):
    binary = require_executable("nginx", "/usr/sbin/nginx")
    port = free_port()
    upstream = live_server.url.split("//", 1)[1]
    root = Path(settings.PRIVATE_STORAGE_ROOT).resolve()
    root.mkdir(parents=True, exist_ok=True)
    mime_types = Path(binary).resolve().parent.parent.parent / "etc" / "nginx" / "mime.types"
    if not mime_types.exists():
        mime_types = Path("/etc/nginx/mime.types")
    site = SITE_CONFIG.format(
        port=port, tmp=tmp_path, root=root, upstream=upstream, log_config=readme_log_config()
    )
    config = MAIN_CONFIG.format(
        # As root, nginx's workers would switch to "nobody", who cannot read the test's files.
        user="user root;" if os.geteuid() == 0 else "",
        tmp=tmp_path,
        mime_types=mime_types,
        site=site,
    )
    (tmp_path / "nginx.conf").write_text(config)
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                process.kill()
                pytest.fail(f"nginx did not start: {output}")
            time.sleep(0.05)
    try:
        yield type("Nginx", (), {"url": f"http://127.0.0.1:{port}", "tmp": tmp_path})
    finally:
        process.terminate()
        process.wait(timeout=10)


def get(url, method="GET", **headers):
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (local)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def app_log():
    """Everything the app and Django log during the test, through the redacting filter."""
    records: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))
            request = getattr(record, "request", None)
            if request is not None and hasattr(request, "get_full_path"):
                records.append(request.get_full_path())

    handler = Handler(level=logging.DEBUG)
    handler.addFilter(RedactTokensFilter())
    loggers = [logging.getLogger(n) for n in ("django", "wagtail_paid_delivery", "")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Atlas", files=0, download_limit=3)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(DATA, name="atlas.pdf"))
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return issued, file


def press(issued, file) -> str:
    response = Client().post(
        reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    )
    assert response.status_code == 303
    return response["Location"]


def counted(issued, file) -> int:
    row = FileDownloadCount.objects.filter(link=issued.link, file_id=file.pk).first()
    return row.count if row else 0


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_download_through_nginx_with_range_and_no_token_in_the_apps_log(nginx, bought, app_log):
    issued, file = bought
    page_status, _, page = get(nginx.url + f"/shop/d/{issued.token}/")
    assert page_status == 200 and b"Atlas" in page
    url = nginx.url + press(issued, file)

    status, headers, body = get(url)
    assert status == 200
    assert body == DATA
    assert headers["Content-Length"] == str(len(DATA))
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == 'attachment; filename="atlas.pdf"'
    assert headers["Cache-Control"] == "private, no-store"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert "X-Accel-Redirect" not in headers and "X-Accel-Expires" not in headers
    assert counted(issued, file) == 1

    # Range: nginx answers 206 with the right bytes; a continuation does not count.
    status, headers, body = get(url, Range="bytes=1000-1999")
    assert status == 206
    assert body == DATA[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
    status, headers, body = get(url, Range="bytes=-100")
    assert status == 206 and body == DATA[-100:]
    assert counted(issued, file) == 1

    # HEAD is Django's; it counts nothing.
    status, headers, _ = get(url, method="HEAD")
    assert status == 200 and headers["Content-Length"] == str(len(DATA))
    assert counted(issued, file) == 1

    # The internal location cannot be asked for directly.
    status, _, body = get(nginx.url + "/_paid_files/" + file.file.name)
    assert status == 404 and DATA[:100] not in body

    # Refusals are still the app's: an expired link gets its 410 page through nginx.
    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert get(url)[0] == 410
    assert get(nginx.url + f"/shop/d/{issued.token}/")[0] == 410
    assert get(nginx.url + f"/shop/d/{'Z' * 43}/")[0] == 404

    events = DownloadEvent.objects.filter(link=issued.link).values_list("outcome", "counted")
    assert ("served", True) in list(events)

    log = "\n".join(app_log)
    assert "Gone: /shop/d/[redacted]/" in log and "Not Found: /shop/d/[redacted]/" in log
    assert issued.token not in log
    assert url.rsplit("/d/h/", 1)[1].strip("/") not in log
    # nginx's access log with the README's log_format holds no token either.
    time.sleep(0.2)
    access = (nginx.tmp / "access.log").read_text()
    assert "/shop/d/[redacted]/" in access and "/shop/d/h/[redacted]/" in access
    assert issued.token not in access


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx", "DOWNLOAD_LIMIT": None})
def test_one_gib_sparse_file_through_nginx(nginx, home):
    relative = "products/sparse-nginx/big.bin"
    path = Path(settings.PRIVATE_STORAGE_ROOT) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # a sparse gibibyte: no disk, no memory
    try:
        product = ProductPageFactory(parent=home, files=0, download_limit=0)
        file = ProductFileFactory(page=product, file=relative, size=1 << 30, sha256="")
        issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
        url = nginx.url + press(issued, file)
        digest = hashlib.sha256()
        total = 0
        request = urllib.request.Request(url)
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (local)
            assert response.status == 200
            assert response.headers["Content-Length"] == str(1 << 30)
            while chunk := response.read(1 << 20):
                total += len(chunk)
                digest.update(chunk)
        assert total == 1 << 30
        status, headers, body = get(url, Range=f"bytes={(1 << 30) - 10}-")
        assert status == 206 and body == b"\0" * 10
        assert counted(issued, file) == 1
    finally:
        path.unlink()


def get_raw(url, headers):
    """A GET whose header lines are sent as given, repeats included (urllib merges them)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", parts.path)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_no_byte_through_nginx_without_a_count(nginx, bought):
    """Each way of asking nginx for bytes on one hand-off: it counted, or it was refused."""
    issued, file = bought  # three downloads per file
    size = len(DATA)
    url = nginx.url + press(issued, file)

    # HEAD is answered by the app, with no bytes: nothing counted.
    assert get(url, method="HEAD")[0] == 200
    assert counted(issued, file) == 0
    # The first request counts although it starts after byte 0.
    status, headers, body = get(url, Range="bytes=100-199")
    assert (status, body) == (206, DATA[100:200])
    assert counted(issued, file) == 1
    nginx_etag = headers["ETag"]  # nginx's own validator (mtime-size), not the app's SHA-256
    # A plain resume rides on it; so does a suffix.
    assert get(url, Range="bytes=200-299")[2] == DATA[200:300]
    assert get(url, Range="bytes=-100")[2] == DATA[-100:]
    assert counted(issued, file) == 1
    # If-Range: nginx compares it with its own ETag and sends the range; the app cannot know
    # in advance, so it counted a download.
    status, _, body = get(url, Range="bytes=300-399", **{"If-Range": nginx_etag})
    assert (status, body) == (206, DATA[300:400])
    assert counted(issued, file) == 2
    # The app's own ETag in If-Range asks the app for one byte; nginx, comparing with its own
    # ETag, sends the whole file. Had the app charged one byte, this would repeat for free.
    app_etag = f'"{hashlib.sha256(DATA).hexdigest()}"'
    status, _, body = get(url, Range="bytes=-1", **{"If-Range": app_etag})
    assert (status, body) == (200, DATA)
    assert counted(issued, file) == 3
    # The limit is reached. Two ranges, one from byte 0 (nginx would answer multipart), and two
    # Range lines (nginx reads the first, bytes=0-; the app sees both) would count: refused,
    # and the hand-off with them.
    status, _, body = get(url, Range="bytes=0-9,20-29")
    assert status == 410 and DATA[:10] not in body
    status, _, body = get_raw(url, [("Range", "bytes=0-"), ("Range", "bytes=100-")])
    assert status == 410 and DATA[:100] not in body
    assert counted(issued, file) == 3
    # Refused for good: even a plain resume well within the budget gets nothing now.
    for headers in ({"Range": "bytes=400-499"}, {"Range": f"bytes={size - 1}-"}, {}):
        status, _, body = get(url, **headers)
        assert status == 410 and DATA[400:500] not in body, headers
    FileDownloadCount.objects.update(count=0)  # an editor's reset does not revive it either
    assert get(url, Range="bytes=400-499")[0] == 410
    assert DownloadHandoff.objects.get().refused_at is not None


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_repeated_range_lines_through_nginx_count(nginx, bought):
    issued, file = bought
    url = nginx.url + press(issued, file)
    assert get(url, Range="bytes=0-0")[2] == DATA[:1]
    # nginx serves the first line (the whole file from byte 0); the app sees both: counted.
    status, _, body = get_raw(url, [("Range", "bytes=0-"), ("Range", "bytes=100-")])
    assert (status, body) == (206, DATA)
    assert counted(issued, file) == 2
    status, _, body = get_raw(url, [("Range", "bytes=100-"), ("Range", "bytes=0-")])
    assert (status, body) == (206, DATA[100:])
    assert counted(issued, file) == 3
    # (Two ranges, one from byte 0: nginx answers multipart. Counted, so refused at the limit.)
    status, headers, body = get(url, Range="bytes=0-9,20-29")
    assert status == 410 and DATA[:10] not in body


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_parallel_first_requests_through_nginx_at_the_limit(nginx, home):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; run with DATABASE_URL=postgres://...")
    product = ProductPageFactory(parent=home, files=0, download_limit=2)
    file = ProductFileFactory(page=product, file=ContentFile(DATA, name="atlas.pdf"))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    forms = ["bytes=100-", "bytes=-100", "bytes=0-", "bytes=5-9,0-1", "bytes=1-1"]
    urls = [nginx.url + press(issued, file) for _ in forms * 2]

    def fetch(url, range_header):
        status, _, body = get(url, Range=range_header)
        return status, body

    results = run_at_once(
        [functools.partial(fetch, u, r) for u, r in zip(urls, forms * 2, strict=True)]
    )
    served = [body for status, body in results if status in (200, 206)]
    assert len(served) == 2
    assert all(status == 410 for status, _ in results if status not in (200, 206))
    assert counted(issued, file) == 2


def raw_request(base_url: str, request_line: str, *headers: str) -> bytes:
    """Send ``request_line`` byte for byte (urllib would normalise an absolute-form target)."""
    host, port = base_url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = "\r\n".join([request_line, f"Host: {host}", *headers, "Connection: close"])
        sock.sendall((head + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_access_log_redacts_every_delivery_shape(nginx, bought, app_log):
    """The README's map + log_format against the shapes and encodings a token can take."""
    issued, file = bought
    token = issued.token
    signed = press(issued, file).rsplit("/d/h/", 1)[1].strip("/")
    port = nginx.url.rsplit(":", 1)[1]
    targets = [
        f"/shop/d/{token}/",
        f"/shop/d/{token}/{file.pk}/",
        f"/shop/d/h/{signed}/",
        f"/shop/d%2F{token}/",
        f"/shop/d%2f{token}/",
        f"/shop%2Fd%2F{token}%2F",
        f"/shop/%64/{token}/",
        f"/shop/%44/{token}/",
        f"/shop/d%252F{token}/",
        f"/shop/d%25252F{token}/",
        f"/shop/%2564/{token}/",
        f"/shop/d/%68/{signed}/",
        f"/shop/d%2Fh%2F{signed}%2F",
        f"/shop/D/H/{signed}/",
        f"/shop/d/{token[:12]}",  # truncated
        f"/shop/d/%20{token}/",  # pasted from a wrapped plain-text email
        f"/shop//d//{token}/",
        f"/shop/./d/./{token}/",
        f"/shop/d/%2E/%2F{token}/",
        f"/shop/d/{token}/?again=/shop/d/{token}/",  # two: cut from the first
        f"/shop/thanks/?next=%2Fshop%2Fd%2F{token}%2F&x=1",
        f"/shop/thanks/?next=/shop/d/h/{signed}/",
        f"http://127.0.0.1:{port}/shop/d/{token}/",  # absolute form
    ]
    referers = [
        f"http://127.0.0.1:{port}/shop/d/{token}/",
        f"https://shop.example/shop/d%2F{token}/",
        f"https://shop.example/shop/d/h/{signed}/?q=1",
    ]
    for n, target in enumerate(targets):
        answer = raw_request(
            nginx.url, f"GET {target} HTTP/1.1", f"Referer: {referers[n % len(referers)]}"
        )
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]

    time.sleep(0.3)
    access = (nginx.tmp / "access.log").read_text().splitlines()
    assert len(access) == len(targets)
    for line in access:
        assert "[redacted]" in line, line
        for secret in (token, signed):
            for i in range(len(secret) - 7):
                assert secret[i : i + 8] not in line, line
    # What stays readable: the prefix, the file id, a clean query, the status.
    assert any(f'"GET /shop/d/[redacted]/{file.pk}/" 405' in line for line in access)
    assert any('"GET /shop/d/h/[redacted]/" 200' in line for line in access)
    assert any("/shop/thanks/?next=%2Fshop%2Fd%2F[redacted]%2F&x=1" in line for line in access)
    assert any('"GET /shop/d/[redacted]" 200' in line for line in access)  # the two-token line

    log = "\n".join(app_log)  # and the app's own log behind nginx
    for i in range(len(token) - 7):
        assert token[i : i + 8] not in log


@override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": "nginx"})
def test_nginx_serves_the_version_the_purchase_is_entitled_to(nginx, bought):
    from wagtail_paid_delivery.product.models import ProductFile, ProductPage

    issued, file = bought
    new = b"second edition\n" * 9000
    # The editor replaces the upload (as a publish saves the row): version 2.
    file.file = ContentFile(new, name="atlas.pdf")
    file.release_notes = "Second edition."
    file.save()
    ProductPage.objects.filter(pk=file.page_id).update(past_buyers_get="bought")

    # Bought before version 2: nginx sends version 1's bytes, ranges included.
    status, headers, body = get(nginx.url + press(issued, file))
    assert (status, body) == (200, DATA)
    assert headers["Content-Length"] == str(len(DATA))
    status, _, body = get(nginx.url + press(issued, file), Range="bytes=1000-1999")
    assert (status, body) == (206, DATA[1000:2000])
    # Bought after: version 2; and under "the latest version" the first buyer gets it too.
    later = links.issue_link(
        PurchaseFactory(paid=True, product=file.page), reason=DownloadLink.Reason.WEBHOOK
    )
    assert get(nginx.url + press(later, file))[2] == new
    ProductPage.objects.filter(pk=file.page_id).update(past_buyers_get="latest")
    assert get(nginx.url + press(issued, ProductFile.objects.get(pk=file.pk)))[2] == new
