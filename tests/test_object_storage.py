"""Product files on S3-compatible storage (django-storages' S3Storage), delivered by presigned
redirects: end to end against two S3-compatible servers, each proving what it can.

- s3rver (npm, ``tests/package-lock.json``) checks a presigned URL's expiry (AWS's V4 scheme and
  the older V2) and V2 query signatures, but serves anonymous reads: so the bytes, Range, the
  signed Content-Disposition, expiry and tampering are proven here.
- moto's standalone server (``moto[server]``, PyPI) enforces object ACLs on anonymous reads but
  accepts any signature: so "the editor's upload is not readable anonymously" is proven there.

The server tests run once, in the PostgreSQL run of the suite (``.ci/run``); without s3rver or
moto they skip with the reason, and fail under WPD_REQUIRE_SYSTEM_DEPS=1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from django.core import checks
from django.core.files.base import ContentFile
from django.urls import reverse

from tests.conftest import missing_dependency, require_executable
from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.processes import ON_POSTGRES, free_port, http_answers, wait_for
from tests.test_product_admin import edit_url, form_errors, product_data, upload
from wagtail_paid_delivery import links, selftest
from wagtail_paid_delivery.models import DownloadEvent, FileDownloadCount
from wagtail_paid_delivery.product.models import ProductFile

pytestmark = pytest.mark.django_db

#: Each server test starts real servers: once is enough, and CI runs PostgreSQL last.
once_on_postgres = pytest.mark.skipif(
    not ON_POSTGRES,
    reason="the object storage servers are tested once, in the PostgreSQL run "
    "(DATABASE_URL=postgres://…)",
)

S3RVER = Path(__file__).resolve().parent / "node_modules" / "s3rver" / "bin" / "s3rver.js"
BUCKET = "paid-files"
DATA = bytes(range(256)) * 400  # 100 KiB, every byte value
NAME = "star atlas é.pdf"


# The servers ----------------------------------------------------------------------------------


def _start(command: list[str], port: int, tmp: Path, name: str):
    log = (tmp / f"{name}.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (our own command line)
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def answers():
        """the S3 server to answer"""
        assert process.poll() is None, (tmp / f"{name}.log").read_text()
        return http_answers(port)

    wait_for(answers, 30)
    return process


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def s3rver_endpoint(tmp_path_factory):
    """s3rver on a free loopback port, with an empty bucket; its URL."""
    node = require_executable("node", install_hint="apt-get install -y nodejs npm")
    if not S3RVER.is_file():
        missing_dependency(
            f"s3rver is not installed (looked for {S3RVER}); run: npm ci --prefix tests"
        )
    tmp = tmp_path_factory.mktemp("s3rver")
    port = free_port()
    command = [node, str(S3RVER), "-d", str(tmp / "data"), "-a", "127.0.0.1", "-p", str(port)]
    process = _start([*command, "--silent", "--configure-bucket", BUCKET], port, tmp, "s3rver")
    yield f"http://127.0.0.1:{port}"
    _stop(process)


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """moto's standalone S3 server on a free loopback port, with an empty bucket; its URL."""
    for module in ("moto", "flask", "storages"):
        if importlib.util.find_spec(module) is None:
            missing_dependency(
                f"{module} is not installed; pip install -e '.[test]' (moto[server], "
                "django-storages[s3])"
            )
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = _start(command, port, tmp, "moto")
    endpoint = f"http://127.0.0.1:{port}"
    storage_for(endpoint, "testing").connection.meta.client.create_bucket(Bucket=BUCKET)
    yield endpoint
    _stop(process)


def storage_for(endpoint: str, key: str, storage_class=None, **options):
    """An S3Storage on ``endpoint``'s bucket, configured as the README says."""
    from storages.backends.s3 import S3Storage

    return (storage_class or S3Storage)(
        bucket_name=BUCKET,
        endpoint_url=endpoint,
        access_key=key,
        secret_key=key,
        region_name="us-east-1",
        addressing_style="path",
        file_overwrite=False,
        **{"signature_version": "s3v4", **options},
    )


def s3rver_storage(endpoint: str, **options):
    return storage_for(endpoint, "S3RVER", **options)  # s3rver's built-in account


def moto_storage(endpoint: str, **options):
    return storage_for(endpoint, "testing", **options)


def query_v2_storage(endpoint: str):
    """Talks V4 to s3rver and presigns with V2.

    s3rver checks V2 query signatures (not V4 ones), but refuses botocore's V2 *header*
    signatures; so uploads and HEADs go signed V4 and the URL buyers get is signed V2, over the
    same fields (method, bucket and key, the response-* overrides, the expiry).
    """
    from storages.backends.s3 import S3Storage

    signer = s3rver_storage(endpoint, signature_version="s3")

    class QueryV2Storage(S3Storage):
        def url(self, name, parameters=None, expire=None, http_method=None):
            return signer.url(name, parameters, expire, http_method)

    return storage_for(endpoint, "S3RVER", QueryV2Storage)


@pytest.fixture
def product_storage(monkeypatch, settings):
    """Makes ``storage`` the product storage: the file field's (fixed when models load) and
    the STORAGE setting's (what the checks and the self-test read)."""

    def use(storage):
        monkeypatch.setattr(ProductFile._meta.get_field("file"), "storage", storage)
        settings.WAGTAIL_PAID_DELIVERY = {
            **settings.WAGTAIL_PAID_DELIVERY,
            "STORAGE": lambda: storage,
            "SERVE_BACKEND": "s3",
            "PRESIGNED_URL_LIFETIME": 2,
        }
        return storage

    return use


# What a buyer does ----------------------------------------------------------------------------


def bought_file(home, name: str = NAME, data: bytes = DATA):
    """A paid purchase of a product with one file (written to the product storage) and its
    link."""
    product = ProductPageFactory(parent=home, title="Atlas", files=0, download_limit=3)
    file = ProductFileFactory(page=product, title="Atlas", file=ContentFile(data, name=name))
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    return issued, file


def presigned_url(client, issued, file) -> str:
    """Press the download button, follow it to the hand-off: the storage URL it redirects to."""
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    handoff = client.post(button)
    assert handoff.status_code == 303
    response = client.get(handoff["Location"])
    assert response.status_code == 302, response.content[:300]
    assert response["Cache-Control"] == "private, no-store"
    return response["Location"]


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` as a browser with no credentials would."""
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def counted(issued, file) -> int:
    row = FileDownloadCount.objects.filter(link=issued.link, file_id=file.pk).first()
    return row.count if row else 0


# s3rver: bytes, Range, Content-Disposition, expiry, signatures --------------------------------


@once_on_postgres
def test_presigned_redirect_serves_the_bytes_and_ranges_under_the_files_name_then_expires(
    client, home, s3rver_endpoint, product_storage
):
    product_storage(s3rver_storage(s3rver_endpoint))
    issued, file = bought_file(home)
    assert file.size == len(DATA) and file.sha256 == hashlib.sha256(DATA).hexdigest()
    url = presigned_url(client, issued, file)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3rver_endpoint
    assert parts.path == f"/{BUCKET}/{quote(file.file.name)}"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["2"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert counted(issued, file) == 1

    status, headers, body = fetch(url)
    assert (status, body) == (200, DATA)
    assert headers["Content-Disposition"].startswith('attachment; filename="star')
    assert "filename*=UTF-8''star_atlas_%C3%A9.pdf" in headers["Content-Disposition"]
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Cache-Control"] == "private, no-store"

    status, headers, body = fetch(url, Range="bytes=1000-1999")
    assert status == 206 and body == DATA[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
    status, _headers, body = fetch(url, Range="bytes=102000-")  # a resume
    assert status == 206 and body == DATA[102000:]

    time.sleep(3.1)  # PRESIGNED_URL_LIFETIME is 2 seconds; X-Amz-Date has whole seconds
    status, _headers, body = fetch(url)
    assert status == 403 and b"Request has expired" in body
    # Only the app's own redirect was counted; the storage's answers were not the app's.
    assert counted(issued, file) == 1
    assert DownloadEvent.objects.filter(outcome="served").count() == 1


@once_on_postgres
def test_a_presigned_url_carries_only_its_object_and_its_headers(
    client, home, s3rver_endpoint, product_storage
):
    """Edited in any signed part (signature, key, disposition, expiry), the URL is refused."""
    product_storage(query_v2_storage(s3rver_endpoint))
    issued, file = bought_file(home)
    _other_issued, other = bought_file(home, name="other.pdf", data=b"another buyer's file")
    url = presigned_url(client, issued, file)
    assert "Signature=" in url and "Expires=" in url
    assert fetch(url)[::2] == (200, DATA)

    own_key = urlsplit(url).path
    other_key = f"/{BUCKET}/{other.file.name}"
    query = parse_qs(urlsplit(url).query)
    expires = query["Expires"][0]
    edits = {
        "signature": url.replace("Signature=", "Signature=A"),
        "another object": url.replace(own_key, other_key),
        "inline disposition": url.replace("attachment", "inline"),
        "text/html": url.replace("application%2Fpdf", "text%2Fhtml"),
        "later expiry": url.replace(f"Expires={expires}", f"Expires={int(expires) + 3600}"),
    }
    for what, edited in edits.items():
        assert edited != url, what
        status, _headers, body = fetch(edited)
        assert status == 403, what
        assert b"SignatureDoesNotMatch" in body, what
        assert DATA not in body and b"another buyer" not in body, what

    time.sleep(3.1)
    status, _headers, body = fetch(url)
    assert status == 403 and b"Request has expired" in body


# moto: the editor's upload is private --------------------------------------------------------


@once_on_postgres
def test_editors_upload_lands_private_and_buyers_get_it_by_presigned_redirect(
    admin_client, client, home, moto_endpoint, product_storage
):
    storage = product_storage(moto_storage(moto_endpoint))
    page = ProductPageFactory(parent=home, title="Field guide", slug="field-guide", files=0)
    data = product_data([{"title": "The guide", "file": upload("field-guide.pdf", DATA)}])
    response = admin_client.post(edit_url(page), data)
    assert response.status_code == 302, form_errors(response)

    file = ProductFile.objects.get(page=page)
    assert file.size == len(DATA) and file.sha256 == hashlib.sha256(DATA).hexdigest()
    client_s3 = storage.connection.meta.client
    stored = client_s3.get_object(Bucket=BUCKET, Key=file.file.name)
    assert stored["Body"].read() == DATA
    grants = client_s3.get_object_acl(Bucket=BUCKET, Key=file.file.name)["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in grants)
    # Anonymous reads of the object's plain URL are refused.
    plain = f"{moto_endpoint}/{BUCKET}/{file.file.name}"
    status, _headers, body = fetch(plain)
    assert status == 403 and DATA not in body

    issued = links.issue_link(PurchaseFactory(paid=True, product=page), reason="webhook")
    url = presigned_url(client, issued, file)
    assert urlsplit(url).path == urlsplit(plain).path
    assert fetch(url)[::2] == (200, DATA)


@once_on_postgres
def test_selftest_finds_an_uploaded_probe_private_only_where_it_is(
    moto_endpoint, s3rver_endpoint, product_storage
):
    """The self-test's object storage probe: OK on moto's private objects; FAIL when objects are
    written public-read or authenticated-read (moto enforces both) or the server serves anyone
    (s3rver)."""
    product_storage(moto_storage(moto_endpoint))
    result = selftest.object_storage_probe()
    assert result is not None and result.ok, result
    assert "answered 403" in result.detail

    product_storage(moto_storage(moto_endpoint, default_acl="public-read"))
    result = selftest.object_storage_probe()
    assert result is not None and not result.ok
    assert "with the object's bytes" in result.detail
    assert "Block Public Access" in result.hint

    # Refused to strangers, but readable by any AWS account: the probe reads the ACL too.
    product_storage(moto_storage(moto_endpoint, default_acl="authenticated-read"))
    result = selftest.object_storage_probe()
    assert result is not None and not result.ok
    assert "ACL grants READ to AuthenticatedUsers" in result.detail

    product_storage(s3rver_storage(s3rver_endpoint))
    result = selftest.object_storage_probe()
    assert result is not None and not result.ok
    assert "answered 200 with the object's bytes" in result.detail

    # The probe objects are removed, passed or failed.
    client_s3 = moto_storage(moto_endpoint).connection.meta.client
    listed = client_s3.list_objects_v2(Bucket=BUCKET, Prefix=selftest.PROBE_FOLDER)
    assert listed.get("KeyCount", 0) == 0


@once_on_postgres
def test_a_storage_that_would_hand_out_its_permanent_url_is_refused_before_counting(
    client, home, moto_endpoint, product_storage
):
    product_storage(moto_storage(moto_endpoint))
    issued, file = bought_file(home)
    unsigned = moto_storage(moto_endpoint, querystring_auth=False)
    product_storage(unsigned)
    file.file.storage = unsigned
    find = links.find_handoff
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(links, "find_handoff", lambda ticket: (find(ticket)[0], file))
        button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
        response = client.get(client.post(button)["Location"])
    assert response.status_code == 503
    assert "Location" not in response
    assert counted(issued, file) == 0


def test_while_s3_does_not_answer_a_download_is_503_and_counts_nothing(
    client, home, product_storage
):
    """botocore's errors are not OSErrors: the upload's measuring and the download still see a
    storage that is down, not a crash."""
    pytest.importorskip("storages", reason="django-storages is in the test extra")
    from botocore.config import Config

    down = storage_for(
        f"http://127.0.0.1:{free_port()}",  # nobody listens
        "testing",
        client_config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    product_storage(down)
    product = ProductPageFactory(parent=home, title="Atlas", files=0)
    file = ProductFileFactory(page=product, title="Atlas", file="products/abc/atlas.pdf")
    assert (file.size, file.sha256) == (0, "")  # not measurable now: measured when served
    issued = links.issue_link(PurchaseFactory(paid=True, product=product), reason="webhook")
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    response = client.get(client.post(button)["Location"])
    assert response.status_code == 503 and "Location" not in response
    assert counted(issued, file) == 0
    assert DownloadEvent.objects.get().outcome == "missing_file"


# System checks: no server needed (signing and settings are local) -----------------------------


@pytest.fixture
def s3_settings(settings):
    pytest.importorskip("storages", reason="django-storages is in the test extra")

    def use(serve_backend: str = "s3", **options):
        storage = storage_for("http://127.0.0.1:9", "testing", **options)
        settings.WAGTAIL_PAID_DELIVERY = {
            **settings.WAGTAIL_PAID_DELIVERY,
            "STORAGE": lambda: storage,
            "SERVE_BACKEND": serve_backend,
        }
        return {m.id: m for m in checks.run_checks() if str(m.id).startswith("wagtail_paid")}

    return use


def test_a_private_presigning_s3_storage_passes_the_checks(s3_settings):
    found = s3_settings()
    assert "wagtail_paid_delivery.E080" not in found
    assert "wagtail_paid_delivery.E081" not in found
    assert "wagtail_paid_delivery.E081" not in s3_settings(default_acl="private")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"querystring_auth": False}, "querystring_auth is False"),
        ({"custom_domain": "files.example.com"}, "custom_domain without a CloudFront signer"),
    ],
)
def test_presigned_backend_with_an_unsigned_storage_url_is_e080(s3_settings, options, words):
    found = s3_settings(**options)
    assert words in found["wagtail_paid_delivery.E080"].msg
    assert found["wagtail_paid_delivery.E080"].level == checks.ERROR
    # Another backend never hands out the storage's URL.
    assert "wagtail_paid_delivery.E080" not in s3_settings("django", **options)


@pytest.mark.parametrize(
    "options",
    [
        {"default_acl": "public-read"},
        {"default_acl": "authenticated-read"},
        {"object_parameters": {"ACL": "public-read-write"}},
        {"default_acl": "private", "object_parameters": {"ACL": "public-read"}},
    ],
)
@pytest.mark.parametrize("serve_backend", ["s3", "django"])
def test_a_storage_writing_public_objects_is_e081_whatever_the_backend(
    s3_settings, options, serve_backend
):
    found = s3_settings(serve_backend, **options)
    message = found["wagtail_paid_delivery.E081"]
    assert message.level == checks.ERROR and "public ACL" in message.msg


def test_s3rver_and_moto_are_pinned_where_ci_installs_them():
    """.ci/run installs tests/package-lock.json (s3rver) and the test extra (moto[server])."""
    import json
    import tomllib

    root = Path(__file__).resolve().parent.parent
    lock = json.loads((root / "tests" / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/s3rver"]["version"] == "3.7.1"
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(r.startswith("moto[server]") for r in extras["test"])
    assert any(r.startswith("django-storages[s3]") for r in extras["s3"])
