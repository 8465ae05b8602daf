"""In real Chromium: after a download, the page's downloads-left counts change without a
reload, to exactly what a reload shows, down to the limit (issue 13, point 8).

Takes docs/screenshots/download-checksum-{1280,390}.png (the checksum's disclosure open) and
download-after-1280.png (after a download), with ``WPD_SCREENSHOTS=1``.
"""

from __future__ import annotations

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


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Star atlas", files=0)
    atlas = ProductFileFactory(
        page=product, title="Atlas (PDF)", file=ContentFile(b"atlas" * 4000, name="atlas.pdf")
    )
    charts = ProductFileFactory(
        page=product, title="Charts", file=ContentFile(b"charts" * 3000, name="charts.zip")
    )
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=issued.link.pk).update(download_limit=2)
    return issued, atlas, charts


#: What the page says about the files, as a buyer reads it (the intro has the count too).
SHOWN = """() => ({
    intro: document.getElementById("pd-download-intro").innerText,
    counts: Array.from(document.querySelectorAll("[data-pd-left]"), e => e.innerText),
    disabled: Array.from(document.querySelectorAll("ul.files button"), b => b.disabled),
})"""


def download(page, title: str) -> None:
    with page.expect_download() as info:
        page.get_by_role("button", name=f"Download {title}").click()
    info.value.path()  # the whole file arrived


def wait_for_left(page, file, left: int) -> None:
    # A function, not an expression string: the page's CSP refuses Playwright's eval of one.
    page.wait_for_function(
        "([id, left]) => document.getElementById(id).dataset.pdLeft === left",
        arg=[f"pd-left-{file.pk}", str(left)],
        timeout=15_000,
    )


def counted(issued) -> dict[int, int]:
    rows = FileDownloadCount.objects.filter(link=issued.link)
    return in_thread(lambda: dict(rows.values_list("file_id", "count")))


def test_counts_follow_downloads_without_a_reload_and_match_one(
    bought, live_server, headless_chromium
):
    issued, atlas, charts = bought
    url = live_server.url + reverse("wagtail_paid_delivery:download", args=[issued.token])
    context = headless_chromium.new_context(
        accept_downloads=True, viewport={"width": 1280, "height": 800}
    )
    page = context.new_page()
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    assert page.goto(url).status == 200
    assert page.locator(f"#pd-left-{atlas.pk}").inner_text() == "2 downloads left"

    # The checksum waits behind its disclosure.
    code = page.locator("details.checksum code").first
    assert not code.is_visible()
    page.get_by_text("SHA-256 checksum").first.click()
    assert code.is_visible() and code.inner_text() == atlas.sha256
    page.screenshot(path=str(SCREENSHOTS / "download-checksum-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 800})
    page.screenshot(path=str(SCREENSHOTS / "download-checksum-390.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # A download: the count changes in place (the page was not loaded again)...
    page.evaluate("window.pdSamePage = true")
    download(page, "Atlas (PDF)")
    wait_for_left(page, atlas, 1)
    assert page.evaluate("window.pdSamePage") is True
    after = page.evaluate(SHOWN)
    assert after["counts"] == ["1 download left", "2 downloads left"]
    assert "1 more times" in after["intro"]  # the intro's count too (the default copy's words)
    assert counted(issued) == {atlas.pk: 1}
    page.screenshot(path=str(SCREENSHOTS / "download-after-1280.png"), full_page=True)
    # ...to what a reload shows.
    assert page.reload().status == 200
    assert page.evaluate(SHOWN) == after

    # The file's last download: its button is disabled, its count says so, like after a reload.
    page.evaluate("window.pdSamePage = true")
    download(page, "Atlas (PDF)")
    wait_for_left(page, atlas, 0)
    assert page.evaluate("window.pdSamePage") is True
    last = page.evaluate(SHOWN)
    assert last["counts"] == ["0 downloads left", "2 downloads left"]
    assert last["disabled"] == [True, False]
    button = page.get_by_role("button", name="Download Atlas (PDF)")
    assert button.get_attribute("aria-describedby") == f"pd-left-{atlas.pk}"
    assert page.reload().status == 200
    assert page.evaluate(SHOWN) == last

    # Two quick presses count two downloads; the second one uses the link up: the page, without
    # a reload, disables every button and says why, in the words the reload then shows.
    download(page, "Charts")
    wait_for_left(page, charts, 1)
    download(page, "Charts")
    wait_for_left(page, charts, 0)
    final = page.evaluate(SHOWN)
    assert final["disabled"] == [True, True]
    assert final["counts"][1] == "This link has been used up"
    assert counted(issued) == {atlas.pk: 2, charts.pk: 2}
    assert page.reload().status == 410
    assert page.get_by_role("heading", name="This link has been used up").is_visible()
    assert not refused, refused  # the script and its requests kept to the page's CSP
    context.close()
