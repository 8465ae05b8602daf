"""File versions: an editor replaces an upload in the Wagtail admin and publishes; past buyers are
served the latest version or the one they bought, as the product's policy says, through the real
download URLs ("Download all" included); the migration that brought versions measured every
file again; a buyer never reaches a version they are not entitled to."""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import zipfile
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps as global_apps
from django.core import signing
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from wagtail.models import Revision
from wagtail.test.utils.form_data import inline_formset, nested_form_data

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.test_product_admin import add_url, edit_url, form_errors, product_data, upload
from wagtail_paid_delivery import links, versions
from wagtail_paid_delivery.models import FileVersion, Purchase
from wagtail_paid_delivery.product.models import ProductFile, ProductPage

pytestmark = pytest.mark.django_db

V1 = b"%PDF-1.4 first edition\n" * 300
V2 = b"%PDF-1.7 second edition, typos fixed\n" * 400
SONGS = b"PK\x03\x04 bird songs" * 120


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create_product(admin_client, home, **fields) -> ProductPage:
    files = [
        {"title": "The guide", "file": upload("guide.pdf", V1), "release_notes": "First edition."},
        {"title": "Bird songs", "file": upload("songs.zip", SONGS), "release_notes": ""},
    ]
    response = admin_client.post(add_url(home), product_data(files, **fields))
    assert response.status_code == 302, form_errors(response)
    return ProductPage.objects.get()


def replace_guide(admin_client, page, content: bytes, notes: str, **fields):
    """The edit view's POST that replaces the guide's upload, with notes, and publishes."""
    forms = [
        {"id": str(f.pk), "title": f.title, "file": "", "release_notes": f.release_notes}
        for f in page.files.order_by("sort_order")
    ]
    forms[0]["file"] = upload("guide.pdf", content)
    forms[0]["release_notes"] = notes
    data = product_data(**fields)
    data.update(nested_form_data({"files": inline_formset(forms, initial=len(forms))}))
    return admin_client.post(edit_url(page), data)


def guide(page) -> ProductFile:
    return page.files.order_by("sort_order").first()


def buy(page, **fields) -> links.IssuedLink:
    """A paid purchase of ``page`` (paid now) and its emailed link."""
    return links.issue_link(PurchaseFactory(paid=True, product=page, **fields), reason="webhook")


def download(client, issued, file) -> tuple[object, bytes]:
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    handoff = client.post(button)
    assert handoff.status_code == 303
    response = client.get(handoff["Location"])
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def download_all(client, issued) -> zipfile.ZipFile:
    pressed = client.post(reverse("wagtail_paid_delivery:download_all", args=[issued.token]))
    assert pressed.status_code == 303
    response = client.get(pressed["Location"])
    assert response.status_code == 200
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


@pytest.fixture
def sold(admin_client, home):
    """A product published with version 1, sold, then its guide replaced with notes (v2)."""
    page = create_product(admin_client, home)
    old_buyer = buy(page)
    first_name = guide(page).file.name
    response = replace_guide(admin_client, page, V2, "Fixed the typos on pages 3 and 12.")
    assert response.status_code == 302, form_errors(response)
    return page, old_buyer, first_name


# Versions are made by publishing a new upload ---------------------------------------------------


def test_publishing_a_new_upload_makes_version_two_with_its_notes_and_keeps_the_old_bytes(sold):
    page, _, first_name = sold
    v1, v2 = FileVersion.objects.filter(file_id=guide(page).pk).order_by("number")
    assert (v1.number, v1.size, v1.sha256, v1.notes) == (1, len(V1), sha(V1), "First edition.")
    assert (v2.number, v2.size, v2.sha256) == (2, len(V2), sha(V2))
    assert v2.notes == "Fixed the typos on pages 3 and 12."
    assert v2.crc32 is not None and v2.created_at >= v1.created_at
    assert v1.file.name == first_name != v2.file.name == guide(page).file.name
    # The old bytes stay in private storage: a past buyer may be entitled to them.
    with v1.file.storage.open(v1.file.name, "rb") as handle:
        assert handle.read() == V1
    # The other file was not replaced: still one version.
    songs = page.files.order_by("sort_order")[1]
    assert FileVersion.objects.filter(file_id=songs.pk).count() == 1


def test_republishing_without_a_new_upload_makes_no_version_and_corrects_the_notes(
    admin_client, sold
):
    page, _, _ = sold
    forms = [
        {"id": str(f.pk), "title": f.title, "file": "", "release_notes": f.release_notes}
        for f in page.files.order_by("sort_order")
    ]
    forms[0]["release_notes"] = "Fixed the typos on pages 3 and 14."
    data = product_data()
    data.update(nested_form_data({"files": inline_formset(forms, initial=len(forms))}))
    assert admin_client.post(edit_url(page), data).status_code == 302
    found = FileVersion.objects.filter(file_id=guide(page).pk).order_by("number")
    assert [(v.number, v.notes) for v in found] == [
        (1, "First edition."),
        (2, "Fixed the typos on pages 3 and 14."),
    ]


def test_a_draft_makes_no_version_and_a_scheduled_publish_does(admin_client, client, home):
    page = create_product(admin_client, home, past_buyers_get="bought")
    go_live = timezone.localtime() + timedelta(days=1)
    response = replace_guide(
        admin_client, page, V2, "Scheduled notes.", go_live_at=go_live.strftime("%Y-%m-%d %H:%M")
    )
    assert response.status_code == 302, form_errors(response)
    assert FileVersion.objects.filter(file_id=guide(page).pk).count() == 1
    # Bought before the go-live: keeps version 1 under "the version they bought".
    before = buy(page)

    revision = Revision.page_revisions.get(approved_go_live_at__isnull=False)
    past = timezone.now() - timedelta(minutes=1)
    revision.content["go_live_at"] = past.isoformat()
    revision.approved_go_live_at = past
    revision.save(update_fields=["content", "approved_go_live_at"])
    call_command("publish_scheduled", stdout=StringIO())

    v2 = FileVersion.objects.get(file_id=guide(page).pk, number=2)
    assert (v2.sha256, v2.notes) == (sha(V2), "Scheduled notes.")
    assert download(client, before, guide(page))[1] == V1
    assert download(client, buy(page), guide(page))[1] == V2


# What past buyers get ---------------------------------------------------------------------------


def test_latest_the_old_purchase_gets_the_new_bytes_and_the_page_shows_version_two(client, sold):
    page, old_buyer, _ = sold
    response, body = download(client, old_buyer, guide(page))
    assert (response.status_code, body) == (200, V2)
    assert response["ETag"] == f'"{sha(V2)}"'
    html = client.get(reverse("wagtail_paid_delivery:download", args=[old_buyer.token]))
    html = html.content.decode()
    assert "Version 2," in html and "Fixed the typos on pages 3 and 12." in html
    assert "First edition." not in html


def set_policy(page, policy: str) -> None:
    ProductPage.objects.filter(pk=page.pk).update(past_buyers_get=policy)


def test_bought_the_old_purchase_gets_the_old_bytes_with_range_etag_and_size(client, sold):
    page, old_buyer, _ = sold
    set_policy(page, "bought")
    button = reverse("wagtail_paid_delivery:download_file", args=[old_buyer.token, guide(page).pk])
    url = client.post(button)["Location"]
    first = client.get(url, headers={"Range": "bytes=0-99"})
    assert first.status_code == 206
    assert b"".join(first.streaming_content) == V1[:100]
    assert first["ETag"] == f'"{sha(V1)}"'
    assert first["Content-Range"] == f"bytes 0-99/{len(V1)}"
    rest = client.get(url, headers={"Range": "bytes=100-", "If-Range": first["ETag"]})
    assert (rest.status_code, b"".join(rest.streaming_content)) == (206, V1[100:])
    head = client.head(url)
    assert head["Content-Length"] == str(len(V1))

    html = client.get(reverse("wagtail_paid_delivery:download", args=[old_buyer.token]))
    html = html.content.decode()
    assert "Version 1," in html and "First edition." in html and sha(V1) in html
    assert "Fixed the typos" not in html and sha(V2) not in html
    # The product row still names the new upload: the served copy changed nothing.
    assert guide(page).sha256 == sha(V2)


def test_bought_a_purchase_paid_after_the_new_version_gets_it(client, sold):
    page, _, _ = sold
    set_policy(page, "bought")
    later = buy(page)
    assert download(client, later, guide(page))[1] == V2


def test_download_all_serves_the_entitled_version_of_each_file(client, sold):
    page, old_buyer, _ = sold
    latest = download_all(client, old_buyer)
    assert latest.read("guide.pdf") == V2 and latest.read("songs.zip") == SONGS
    set_policy(page, "bought")
    # A fresh link for the same purchase (the first link's counters are its own).
    again = links.issue_link(old_buyer.link.purchase, reason="resend")
    bought = download_all(client, again)
    assert bought.read("guide.pdf") == V1 and bought.read("songs.zip") == SONGS
    assert bought.testzip() is None


def test_the_library_shows_each_files_version_date_and_notes(client, sold):
    page, old_buyer, _ = sold
    user = UserFactory(username="reader")
    Purchase.objects.filter(pk=old_buyer.link.purchase_id).update(user=user)
    client.force_login(user)
    html = client.get(reverse("wagtail_paid_delivery:library")).content.decode()
    assert "The guide" in html and "Version 2," in html
    assert "Fixed the typos on pages 3 and 12." in html
    set_policy(page, "bought")
    html = client.get(reverse("wagtail_paid_delivery:library")).content.decode()
    assert "Version 1," in html and "First edition." in html and "Fixed the typos" not in html


def test_the_editor_sees_every_version_and_the_policy(admin_client, sold):
    page, _, _ = sold
    html = admin_client.get(edit_url(page)).content.decode()
    assert "File versions" in html
    assert "First edition." in html and "Fixed the typos on pages 3 and 12." in html
    assert "What changed in this version" in html
    assert 'name="past_buyers_get"' in html and 'type="radio"' in html


def test_the_policy_is_chosen_in_the_editor(admin_client, home):
    page = create_product(admin_client, home, past_buyers_get="bought")
    assert page.past_buyers_get == "bought"
    response = admin_client.post(edit_url(page), product_data(past_buyers_get="everything"))
    assert "past_buyers_get" in form_errors(response)
    page.refresh_from_db()
    assert page.past_buyers_get == "bought"


# What another feature (telling past buyers) calls -----------------------------------------------


def test_latest_versions_and_released_since(sold):
    page, old_buyer, _ = sold
    paid_at = old_buyer.link.purchase.paid_at
    released = versions.released_since(page, paid_at)
    assert [(v.file_id, v.number, v.notes) for v in released] == [
        (guide(page).pk, 2, "Fixed the typos on pages 3 and 12.")
    ]
    latest = versions.latest_versions(page)
    assert [v.number for v in latest] == [2, 1]
    assert versions.released_since(page, timezone.now()) == []


# The migration that brought versions ------------------------------------------------------------


def first_versions():
    module = importlib.import_module("wagtail_paid_delivery.product.migrations.0005_file_versions")
    module.first_versions(global_apps, None)


def test_the_migration_makes_version_one_and_measures_every_file_again(home):
    page = ProductPageFactory(parent=home, files=2)
    FileVersion.objects.all().delete()
    ProductFile.objects.update(size=1, sha256="0" * 64, crc32=None)  # stale facts
    first_versions()
    for file in page.files.all():
        with file.file.open("rb") as handle:
            data = handle.read()
        file.refresh_from_db()
        assert (file.size, file.sha256) == (len(data), sha(data))
        version = FileVersion.objects.get(file_id=file.pk)
        assert (version.number, version.size, version.sha256, version.crc32) == (
            1,
            len(data),
            sha(data),
            file.crc32,
        )
    first_versions()  # run again: nothing doubled
    assert FileVersion.objects.count() == 2


def test_the_migration_records_a_missing_file_and_goes_on(home, caplog):
    page = ProductPageFactory(parent=home, files=2)
    FileVersion.objects.all().delete()
    gone, kept = page.files.order_by("sort_order")
    gone.file.storage.delete(gone.file.name)
    with caplog.at_level(logging.WARNING):
        first_versions()
    missing = FileVersion.objects.get(file_id=gone.pk)
    assert (missing.number, missing.size, missing.sha256, missing.crc32) == (1, 0, "", None)
    assert any(
        "missing from storage" in r.getMessage() and gone.file.name in r.getMessage()
        for r in caplog.records
    )
    assert FileVersion.objects.get(file_id=kept.pk).sha256 == kept.sha256 != ""
    # The row keeps what it knew: serving answers 503 for a missing file anyway.
    gone.refresh_from_db()
    assert gone.size > 0


# A buyer never reaches a version they are not entitled to ---------------------------------------


def test_a_buyer_after_version_two_never_gets_version_one(client, sold):
    page, _, _ = sold
    set_policy(page, "bought")
    later = buy(page)
    button = reverse("wagtail_paid_delivery:download_file", args=[later.token, guide(page).pk])
    url = client.post(button)["Location"]
    # Whatever a request adds, the version is the purchase's: the URL names none.
    for extra in ("?version=1", "?v=1&file=1"):
        response = client.get(url + extra)
        assert b"".join(response.streaming_content) == V2
    archive = download_all(client, later)
    assert archive.read("guide.pdf") == V2


def test_a_tampered_hand_off_or_another_products_file_is_a_404(client, admin_client, sold, home):
    page, old_buyer, _ = sold
    set_policy(page, "bought")
    button = reverse("wagtail_paid_delivery:download_file", args=[old_buyer.token, guide(page).pk])
    url = client.post(button)["Location"]
    signed = url.rstrip("/").rsplit("/", 1)[-1]
    payload, _, signature = signed.rpartition(":")
    forged = url.replace(signed, f"{payload}x:{signature}")
    assert client.get(forged).status_code == 404
    # A hand-off signed with another key and the v1 file's stored name: still refused.
    other = signing.dumps({"l": old_buyer.link.pk, "f": guide(page).pk}, key="not the key")
    assert client.get(url.replace(signed, other)).status_code == 404
    # Another product's file through this link's button: 404, nothing served.
    another = ProductPageFactory(parent=home, title="Other")
    file = another.files.first()
    button = reverse("wagtail_paid_delivery:download_file", args=[old_buyer.token, file.pk])
    assert client.post(button).status_code == 404


def test_a_refunded_purchase_is_served_no_version(client, sold):
    page, old_buyer, _ = sold
    set_policy(page, "bought")
    Purchase.objects.filter(pk=old_buyer.link.purchase_id).update(status=Purchase.Status.REFUNDED)
    button = reverse("wagtail_paid_delivery:download_file", args=[old_buyer.token, guide(page).pk])
    assert client.post(button).status_code == 410


def test_a_copy_standing_for_an_old_version_is_never_saved(sold):
    page, old_buyer, _ = sold
    set_policy(page, "bought")
    file = ProductFile.objects.get(pk=guide(page).pk)
    served = versions.entitled_file(old_buyer.link.purchase, file)
    assert served.file.name != file.file.name and served.sha256 == sha(V1)
    with pytest.raises(TypeError):
        served.save()
    assert ProductFile.objects.get(pk=file.pk).sha256 == sha(V2)


def test_the_desks_inspect_view_says_which_version_the_buyer_gets(admin_client, sold):
    page, old_buyer, _ = sold
    inspect = reverse("wagtail_paid_delivery_purchases:inspect", args=[old_buyer.link.purchase_id])
    html = admin_client.get(inspect).content.decode()
    assert "Files this buyer gets" in html and "the latest version" in html
    assert "<td>The guide</td><td>2</td>" in html
    set_policy(page, "bought")
    html = admin_client.get(inspect).content.decode()
    assert "the version they bought" in html and "<td>The guide</td><td>1</td>" in html


@pytest.mark.parametrize("backend", ["nginx", "apache"])
def test_offload_backends_point_at_the_entitled_versions_stored_file(client, sold, backend):
    page, old_buyer, first_name = sold
    set_policy(page, "bought")
    with override_settings(WAGTAIL_PAID_DELIVERY={"SERVE_BACKEND": backend}):
        response, _ = download(client, old_buyer, guide(page))
        later, _ = download(client, buy(page), guide(page))
    header = "X-Accel-Redirect" if backend == "nginx" else "X-Sendfile"
    assert response[header].endswith(first_name)
    assert later[header].endswith(guide(page).file.name) and first_name != guide(page).file.name
