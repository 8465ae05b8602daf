"""The file type label buyers see beside each file: from the stored file, not the editor's words."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink
from wagtail_paid_delivery.models.pages import file_type_label


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("products/2026/guide.pdf", "PDF"),
        ("SHOUTING.PDF", "PDF"),
        ("pack.zip", "ZIP"),
        ("photo.jpeg", "JPG"),  # one label per type, whichever extension the upload had
        ("photo.jpg", "JPG"),
        ("tone.wav", "WAV"),
        ("novel.epub", "EPUB"),
        ("sheet.csv", "CSV"),
        ("letter.docx", "DOCX"),
        ("mystery.wpdunknown", ""),
        ("no-extension", ""),
        ("", ""),
    ],
)
def test_file_type_label_names_the_stored_files_type(name, label):
    assert file_type_label(name) == label


@pytest.mark.django_db
def test_product_and_download_pages_label_the_stored_file_not_the_title(client, home):
    """The editor titled a PDF "(ZIP)": both buyer pages say PDF, from the stored file."""
    product = ProductPageFactory(parent=home, title="Field guide", files=0)
    pdf = ProductFileFactory(
        page=product, title="Guide (ZIP)", file=ContentFile(b"%PDF-1.4\n%%EOF\n", name="g.pdf")
    )
    unknown = ProductFileFactory(
        page=product, title="Extras", file=ContentFile(b"?", name="extras.wpdunknown")
    )

    html = client.get(product.url).content.decode()
    assert f"PDF · {pdf.size_display}" in html
    assert "ZIP ·" not in html
    # An unknown type gets no label rather than a guess.
    assert f'<span class="pd-file-size">{unknown.size_display}</span>' in html

    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    page = client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    download = page.content.decode()
    assert page.status_code == 200
    assert f'<p class="meta">PDF · {pdf.size_display}' in download
    assert f'<p class="meta">{unknown.size_display}' in download
