"""Editors create and edit product pages through the Wagtail admin's own views."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from wagtail.models import Revision
from wagtail.test.utils.form_data import inline_formset, nested_form_data, rich_text

from tests.factories import DeliveryCopyFactory, PurchaseFactory, page_editor
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DeliveryCopy
from wagtail_paid_delivery.product.models import ProductFile, ProductPage

pytestmark = pytest.mark.django_db

PDF = b"%PDF-1.4 field guide\n" * 200
ZIP = b"PK\x03\x04 sample pack" * 50


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def add_url(parent) -> str:
    return reverse(
        "wagtailadmin_pages:add", args=("wagtail_paid_delivery_product", "productpage", parent.pk)
    )


def edit_url(page) -> str:
    return reverse("wagtailadmin_pages:edit", args=(page.pk,))


def product_data(files=None, *, publish=True, initial=0, **fields) -> dict:
    """POST data for the product page form; ``files`` is a list of inline-form dicts."""
    data = {
        "title": "Field guide",
        "slug": "field-guide",
        "intro": "Everything about birds.",
        "body": rich_text("<p>Two hundred pages.</p>"),
        "price_amount": "12.50",
        "currency": "USD",
        "stripe_price_id": "",
        "delivery_copy": "",
        "link_lifetime_hours": "",
        "download_limit": "",
        "files": inline_formset(files or [], initial=initial),
        "comments": inline_formset([]),
        "bundle_items": inline_formset([]),
    }
    data.update(fields)
    data = nested_form_data(data)
    if publish:
        data["action-publish"] = "Publish"
    return data


def two_files() -> list[dict]:
    return [
        {"title": "The guide", "file": upload("field-guide.pdf", PDF)},
        {"title": "Bird songs", "file": upload("songs.zip", ZIP)},
    ]


def form_errors(response) -> dict:
    assert response.status_code == 200, response.status_code
    form = response.context["form"]
    return {k: [str(e) for e in v] for k, v in form.errors.items()}


def test_superuser_creates_and_publishes_a_product_with_two_uploaded_files(admin_client, home):
    response = admin_client.post(add_url(home), product_data(two_files()))
    assert response.status_code == 302, form_errors(response)

    page = ProductPage.objects.get(slug="field-guide")
    assert page.live
    assert page.price_amount == 1250
    assert page.currency == "USD"
    files = list(page.files.order_by("sort_order"))
    assert [f.title for f in files] == ["The guide", "Bird songs"]
    assert files[0].size == len(PDF)
    assert files[0].sha256 == hashlib.sha256(PDF).hexdigest()
    assert files[1].size == len(ZIP)
    assert files[1].sha256 == hashlib.sha256(ZIP).hexdigest()
    assert files[0].file.name.endswith("/field-guide.pdf")
    with files[0].file.open("rb") as handle:
        assert handle.read() == PDF


def test_limited_editor_creates_and_publishes_a_product(client, home):
    client.force_login(page_editor(home))
    response = client.post(add_url(home), product_data(two_files()))
    assert response.status_code == 302, form_errors(response)
    page = ProductPage.objects.get(slug="field-guide")
    assert page.live and page.files.count() == 2


def test_editor_without_add_permission_cannot_create_a_product(client, home):
    client.force_login(page_editor(home, username="reader", permissions=("change",)))
    response = client.post(add_url(home), product_data(two_files()))
    assert response.status_code in (302, 403)
    assert not ProductPage.objects.exists()
    assert not ProductFile.objects.exists()


@pytest.mark.parametrize(
    ("typed", "currency", "stored"),
    [("12.50", "USD", 1250), ("12.5", "USD", 1250), ("1200", "JPY", 1200), ("3.125", "KWD", 3125)],
)
def test_price_typed_in_major_units_is_stored_in_minor_units(
    admin_client, home, typed, currency, stored
):
    data = product_data(two_files(), price_amount=typed, currency=currency)
    response = admin_client.post(add_url(home), data)
    assert response.status_code == 302, form_errors(response)
    assert ProductPage.objects.get().price_amount == stored


def test_fractional_yen_is_refused_with_a_readable_message(admin_client, home):
    data = product_data(two_files(), price_amount="12.5", currency="JPY")
    errors = form_errors(admin_client.post(add_url(home), data))
    assert errors["price_amount"] == ["JPY has no minor unit: enter a whole number."]
    assert not ProductPage.objects.exists()


def test_too_many_decimals_for_dollars_are_refused(admin_client, home):
    data = product_data(two_files(), price_amount="12.505", currency="USD")
    errors = form_errors(admin_client.post(add_url(home), data))
    assert errors["price_amount"] == ["USD allows at most 2 decimal places."]


@pytest.mark.parametrize("typed", ["0", "0.00", "-5"])
def test_zero_or_negative_price_is_refused(admin_client, home, typed):
    errors = form_errors(
        admin_client.post(add_url(home), product_data(two_files(), price_amount=typed))
    )
    assert "price_amount" in errors
    assert not ProductPage.objects.exists()


def test_unknown_currency_is_refused(admin_client, home):
    errors = form_errors(
        admin_client.post(add_url(home), product_data(two_files(), currency="XYZ"))
    )
    assert "currency" in errors
    assert "XYZ is not one of the available choices" in errors["currency"][0]


def test_publishing_without_a_file_is_refused_with_the_forms_message(admin_client, home):
    response = admin_client.post(add_url(home), product_data([]))
    errors = form_errors(response)
    assert errors["__all__"] == [
        "Add at least one file before publishing: buyers need something to download."
    ]
    assert not ProductPage.objects.exists()
    assert "Add at least one file before publishing" in response.content.decode()


def test_saving_a_draft_without_files_works(admin_client, home):
    response = admin_client.post(add_url(home), product_data([], publish=False))
    assert response.status_code == 302, form_errors(response)
    page = ProductPage.objects.get(slug="field-guide")
    assert not page.live
    assert page.price_amount == 1250
    assert page.files.count() == 0


def test_size_and_checksum_are_shown_read_only_in_the_edit_view(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    response = admin_client.get(edit_url(page))
    assert response.status_code == 200
    html = response.content.decode()
    assert hashlib.sha256(PDF).hexdigest() in html
    assert str(len(PDF)) in html
    # Read-only: no input an editor (or a forged POST) could change them with.
    assert not re.search(r'name="files-\d+-(size|sha256)"', html)
    # The price is shown in major units, as the editor typed it.
    assert 'value="12.50"' in html


def test_forged_size_and_checksum_in_the_post_are_ignored(admin_client, home):
    files = [{"title": "Guide", "file": upload("g.pdf", PDF), "size": "1", "sha256": "0" * 64}]
    admin_client.post(add_url(home), product_data(files))
    product_file = ProductFile.objects.get()
    assert product_file.size == len(PDF)
    assert product_file.sha256 == hashlib.sha256(PDF).hexdigest()


def test_editor_chooses_a_delivery_copy(admin_client, home):
    copy = DeliveryCopyFactory(name="Gentle words")
    data = product_data(two_files(), delivery_copy=str(copy.pk))
    response = admin_client.post(add_url(home), data)
    assert response.status_code == 302, form_errors(response)
    page = ProductPage.objects.get()
    assert page.delivery_copy == copy
    assert page.get_delivery_copy() == copy


def _existing_files_formset(page) -> dict:
    """The inline forms for files already saved, as the edit view renders them."""
    forms = [
        {"id": str(f.pk), "title": f.title, "file": ""} for f in page.files.order_by("sort_order")
    ]
    return inline_formset(forms, initial=len(forms))


def test_editing_and_republishing_keeps_the_files(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    before = {f.pk: (f.file.name, f.size, f.sha256) for f in page.files.all()}

    data = product_data(price_amount="15.00", title="Field guide, 2nd ed.")
    data.update(nested_form_data({"files": _existing_files_formset(page)}))
    response = admin_client.post(edit_url(page), data)
    assert response.status_code == 302, form_errors(response)

    page.refresh_from_db()
    assert page.title == "Field guide, 2nd ed."
    assert page.price_amount == 1500
    assert page.live
    after = {f.pk: (f.file.name, f.size, f.sha256) for f in page.files.all()}
    assert after == before
    for product_file in page.files.all():
        assert product_file.file.storage.exists(product_file.file.name)


def test_edit_form_shows_the_stored_price_in_major_units_for_yen(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files(), price_amount="1200", currency="JPY"))
    html = admin_client.get(edit_url(ProductPage.objects.get())).content.decode()
    assert 'value="1200"' in html


def test_deleting_every_file_then_publishing_is_refused(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    files = _existing_files_formset(page)
    for i in range(2):
        files[str(i)]["DELETE"] = "1"
    data = product_data()
    data.update(nested_form_data({"files": files}))
    errors = form_errors(admin_client.post(edit_url(page), data))
    assert "__all__" in errors
    assert page.files.count() == 2


def test_published_product_page_shows_price_files_and_sizes_but_no_file_link(
    admin_client, client, home
):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()

    response = client.get(page.url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "$12.50" in html
    assert "The guide" in html and "Bird songs" in html
    assert filesizeformat(len(PDF)) in html  # "4.1\xa0KB"
    assert filesizeformat(len(ZIP)) in html
    for product_file in page.files.all():
        assert product_file.file.name not in html
        assert product_file.filename not in html
    assert "/admin/paid-delivery/files/" not in html
    assert "products/" not in html


def test_yen_product_page_shows_the_price_without_decimals(admin_client, client, home):
    data = product_data(two_files(), price_amount="1200", currency="JPY", slug="yen")
    admin_client.post(add_url(home), data)
    html = client.get(ProductPage.objects.get().url).content.decode()
    assert "¥1,200" in html
    assert "¥1,200.00" not in html


def test_default_delivery_copy_exists_for_products_that_choose_none(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    assert page.delivery_copy is None
    assert page.get_delivery_copy() == DeliveryCopy.objects.get(is_default=True)


# Replacing a file: its facts (size, SHA-256, hence the ETag) follow the new upload ----------

NEW_PDF = b"%PDF-1.7 second edition, corrected\n" * 300


def _replace_first_file_data(page, content: bytes, **fields) -> dict:
    """Edit-view POST data that replaces the upload of the page's first file."""
    forms = [
        {"id": str(f.pk), "title": f.title, "file": ""} for f in page.files.order_by("sort_order")
    ]
    forms[0]["file"] = upload("field-guide.pdf", content)
    data = product_data(**fields)
    data.update(nested_form_data({"files": inline_formset(forms, initial=len(forms))}))
    return data


def _buyer_starts_a_download(client, page):
    """A paid buyer presses Download and gets the first 100 bytes; returns (url, etag)."""
    file = page.files.order_by("sort_order").first()
    issued = links.issue_link(PurchaseFactory(paid=True, product=page), reason="webhook")
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    url = client.post(button)["Location"]
    response = client.get(url, headers={"Range": "bytes=0-99"})
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == PDF[:100]
    assert response["ETag"] == f'"{hashlib.sha256(PDF).hexdigest()}"'
    return url, response["ETag"]


def _resume(client, url, etag):
    response = client.get(url, headers={"Range": "bytes=100-", "If-Range": etag})
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def _assert_measured(file_pk, content: bytes, old_name: str) -> None:
    product_file = ProductFile.objects.get(pk=file_pk)
    assert product_file.file.name != old_name
    assert product_file.size == len(content)
    assert product_file.sha256 == hashlib.sha256(content).hexdigest()
    with product_file.file.open("rb") as handle:
        assert handle.read() == content


def test_replacing_a_file_and_publishing_remeasures_it_and_a_resume_gets_the_new_file(
    admin_client, client, home
):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    old = page.files.order_by("sort_order").first()
    url, old_etag = _buyer_starts_a_download(client, page)

    response = admin_client.post(edit_url(page), _replace_first_file_data(page, NEW_PDF))
    assert response.status_code == 302, form_errors(response)
    _assert_measured(old.pk, NEW_PDF, old.file.name)

    # The buyer's resume names the old file's ETag: it gets the whole new file, not a splice.
    response, body = _resume(client, url, old_etag)
    assert response.status_code == 200
    assert body == NEW_PDF
    assert response["ETag"] == f'"{hashlib.sha256(NEW_PDF).hexdigest()}"'
    assert response["Content-Length"] == str(len(NEW_PDF))


def test_a_replaced_file_saved_as_a_draft_keeps_serving_the_live_file(admin_client, client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    old = page.files.order_by("sort_order").first()
    url, old_etag = _buyer_starts_a_download(client, page)

    data = _replace_first_file_data(page, NEW_PDF, publish=False)
    response = admin_client.post(edit_url(page), data)
    assert response.status_code == 302, form_errors(response)
    # The draft knows the new file's facts (the edit view shows them)…
    page.refresh_from_db()
    draft = page.get_latest_revision_as_object().files.order_by("sort_order")[0]
    assert (draft.size, draft.sha256) == (len(NEW_PDF), hashlib.sha256(NEW_PDF).hexdigest())
    html = admin_client.get(edit_url(page)).content.decode()
    assert hashlib.sha256(NEW_PDF).hexdigest() in html
    # …while buyers still get the live file, resumed.
    live = ProductFile.objects.get(pk=old.pk)
    assert (live.file.name, live.sha256) == (old.file.name, old.sha256)
    response, body = _resume(client, url, old_etag)
    assert (response.status_code, body) == (206, PDF[100:])


def test_a_replaced_file_published_on_schedule_is_remeasured(admin_client, client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    old = page.files.order_by("sort_order").first()
    url, old_etag = _buyer_starts_a_download(client, page)

    go_live = timezone.localtime() + timedelta(days=1)
    data = _replace_first_file_data(page, NEW_PDF, go_live_at=go_live.strftime("%Y-%m-%d %H:%M"))
    response = admin_client.post(edit_url(page), data)
    assert response.status_code == 302, form_errors(response)
    revision = Revision.page_revisions.get(approved_go_live_at__isnull=False)
    assert ProductFile.objects.get(pk=old.pk).file.name == old.file.name  # not yet

    # A day passes (moved back rather than freezing the clock): the revision's own go_live_at too.
    past = timezone.now() - timedelta(minutes=1)
    revision.content["go_live_at"] = past.isoformat()
    revision.approved_go_live_at = past
    revision.save(update_fields=["content", "approved_go_live_at"])
    call_command("publish_scheduled", stdout=StringIO())
    _assert_measured(old.pk, NEW_PDF, old.file.name)
    response, body = _resume(client, url, old_etag)
    assert (response.status_code, body) == (200, NEW_PDF)


def test_a_file_added_while_editing_is_measured(admin_client, home):
    admin_client.post(add_url(home), product_data(two_files()))
    page = ProductPage.objects.get()
    forms = [
        {"id": str(f.pk), "title": f.title, "file": ""} for f in page.files.order_by("sort_order")
    ]
    forms.append({"title": "Errata", "file": upload("errata.pdf", NEW_PDF)})
    data = product_data()
    data.update(nested_form_data({"files": inline_formset(forms, initial=2)}))
    response = admin_client.post(edit_url(page), data)
    assert response.status_code == 302, form_errors(response)
    added = page.files.get(title="Errata")
    assert (added.size, added.sha256) == (len(NEW_PDF), hashlib.sha256(NEW_PDF).hexdigest())
