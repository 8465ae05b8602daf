"""In real Chromium: a buyer page in the site's layout keeps the strict CSP, and the expiry is
shown in the buyer's own time zone by local-time.js (issue 13)."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import override_settings
from django.urls import reverse

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.test_shop_layout import SITE_LAYOUT
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def download_url(home):
    product = ProductPageFactory(parent=home, title="Star atlas", files=0)
    ProductFileFactory(page=product, title="Atlas", file=ContentFile(b"atlas", name="atlas.pdf"))
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return reverse("wagtail_paid_delivery:download", args=[issued.token])


def test_site_layout_inline_script_is_refused_and_the_expiry_is_in_the_buyers_zone(
    download_url, live_server, headless_chromium
):
    context = headless_chromium.new_context(
        timezone_id="America/New_York", locale="en-US", viewport={"width": 1000, "height": 700}
    )
    page = context.new_page()
    refused = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        assert page.goto(live_server.url + download_url).status == 200
        page.wait_for_selector("time[data-pd-localised]")
    # The site's layout is there, its inline script did not run, ours did.
    assert page.locator("#site-main .pd-page .card h1").inner_text() == "Star atlas"
    assert page.evaluate("document.documentElement.getAttribute('data-site-inline')") is None
    assert refused, "the browser should report the refused inline script and style"
    # The site's inline style (hot pink) was refused too.
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(255, 105, 180)"
    time = page.locator("time[data-pd-local-time]")
    assert time.get_attribute("title").endswith(" UTC")
    assert time.inner_text().endswith(("EST", "EDT")), time.inner_text()
    assert "(in 23\xa0hours)" in page.locator(".intro").inner_text()
    context.close()
