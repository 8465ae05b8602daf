""" "Download all" in a real browser: the button, the ZIP it saves, one count per file.

Also takes the screenshots docs/screenshots/download-all.png (1280 px) and
download-all-390.png (390 px).
"""

from __future__ import annotations

import zipfile

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.screenshots import SCREENSHOTS
from tests.test_download_browser import in_thread
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink, FileDownloadCount

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

FILES = {
    "field-guide.pdf": b"%PDF-1.4 field guide\n" + bytes(range(256)) * 300,
    "maps.zip": b"maps" * 5000,
    "Légende_des_cartes.txt": "Légende : forêts, rivières, sommets\n".encode() * 50,
}


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="The Field Guide", files=0)
    titles = ["Field guide (PDF)", "Maps", "Map legend"]
    for title, (name, data) in zip(titles, FILES.items(), strict=True):
        ProductFileFactory(page=product, title=title, file=ContentFile(data, name=name))
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    return links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)


def test_browser_download_all_saves_one_zip_of_every_file(
    bought, live_server, headless_chromium, tmp_path
):
    issued = bought
    url = live_server.url + reverse("wagtail_paid_delivery:download", args=[issued.token])
    context = headless_chromium.new_context(
        accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    assert page.goto(url).status == 200
    button = page.get_by_role("button", name="Download all")
    assert button.is_visible()
    assert page.get_by_text("Counts as one download of each file in it.").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "download-all.png"), full_page=True)

    with page.expect_download() as info:
        button.click()
    download = info.value
    assert download.suggested_filename == "The Field Guide.zip"
    target = tmp_path / "all.zip"
    download.save_as(str(target))
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == FILES

    counts = in_thread(
        lambda: sorted(
            FileDownloadCount.objects.filter(link=issued.link).values_list("count", flat=True)
        )
    )
    assert counts == [1, 1, 1]

    phone = headless_chromium.new_context(viewport={"width": 390, "height": 844})
    small = phone.new_page()
    assert small.goto(url).status == 200
    assert small.get_by_role("button", name="Download all").is_visible()
    small.screenshot(path=str(SCREENSHOTS / "download-all-390.png"), full_page=True)
    phone.close()
    context.close()
