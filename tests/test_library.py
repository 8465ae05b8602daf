"""library/: a signed-in buyer's purchases; a link is made on the button's POST only."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.screenshots import SCREENSHOTS
from wagtail_paid_delivery.models import DownloadLink, Purchase

pytestmark = pytest.mark.django_db

URL = "/shop/library/"


@pytest.fixture
def buyer(home):
    user = UserFactory(username="reader", email="reader@example.com")
    guide = ProductPageFactory(parent=home, title="Field guide", files=2)
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    mine = PurchaseFactory(paid=True, product=guide, user=user, email="other@example.com")
    by_email = PurchaseFactory(paid=True, product=atlas, email="READER@example.com")
    PurchaseFactory(product=atlas, user=user)  # pending: not listed
    refunded = PurchaseFactory(paid=True, product=atlas, user=user)
    Purchase.objects.filter(pk=refunded.pk).update(status=Purchase.Status.REFUNDED)
    someone_elses = PurchaseFactory(paid=True, product=atlas, email="x@example.com")
    return user, mine, by_email, someone_elses


def test_library_signed_out_asks_for_an_email_not_a_login(client, buyer):
    response = client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="email"' in html and "Email me a sign-in link" in html
    assert "Field guide" not in html
    assert response["Cache-Control"] == "private, no-store"
    assert "script-src 'nonce-" in response["Content-Security-Policy"]


def test_library_lists_the_users_paid_purchases_and_makes_no_link(client, buyer):
    user, mine, by_email, _ = buyer
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    html = response.content.decode()
    assert "Field guide" in html
    assert f"/shop/library/{mine.public_id}/" in html
    assert f"/shop/library/{by_email.public_id}/" not in html  # email matching is off
    assert html.count("Get download link") == 1
    # The refunded purchase is listed, honestly, without a button.
    assert "Refunded: no longer available to download." in html
    assert not DownloadLink.objects.exists()


def test_library_says_what_the_buyer_paid_tax_included(client, buyer):
    """The receipt's total, not the list price: tax and discounts are what the buyer paid."""
    user, mine, _, _ = buyer
    Purchase.objects.filter(pk=mine.pk).update(
        amount=1900, currency="USD", amount_subtotal=1900, amount_tax=190, amount_total=2090
    )
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert "for $20.90" in html
    assert "for $19.00" not in html


@override_settings(WAGTAIL_PAID_DELIVERY={"LIBRARY_MATCH_EMAIL": True})
def test_library_matches_verified_email_when_the_site_allows(client, buyer):
    user, mine, by_email, someone_elses = buyer
    client.force_login(user)
    html = client.get(URL).content.decode()
    assert f"/shop/library/{mine.public_id}/" in html
    assert f"/shop/library/{by_email.public_id}/" in html
    assert f"/shop/library/{someone_elses.public_id}/" not in html


def test_button_issues_a_library_link_and_303s_to_a_working_download_page(client, buyer):
    user, mine, _, _ = buyer
    client.force_login(user)
    response = client.post(f"/shop/library/{mine.public_id}/")
    assert response.status_code == 303
    link = DownloadLink.objects.get()
    assert link.reason == DownloadLink.Reason.LIBRARY and link.purchase == mine
    page = client.get(response["Location"])
    assert page.status_code == 200
    for f in mine.product.specific.product_files:
        assert f.title in page.content.decode()


def test_button_refuses_other_peoples_purchases(client, buyer):
    user, _, by_email, someone_elses = buyer
    client.force_login(user)
    for purchase in (by_email, someone_elses):
        assert client.post(f"/shop/library/{purchase.public_id}/").status_code == 404
    assert not DownloadLink.objects.exists()


def test_library_button_is_post_only_and_csrf_protected(buyer):
    user, mine, _, _ = buyer
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get(f"/shop/library/{mine.public_id}/").status_code == 405
    assert client.post(f"/shop/library/{mine.public_id}/").status_code == 403
    assert not DownloadLink.objects.exists()


# In a real browser (also takes docs/screenshots/library.png) --------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_library_button_opens_a_download_page(buyer, live_server, headless_chromium):

    from django.conf import settings

    from tests.test_download_browser import in_thread

    user = buyer[0]
    client = Client()
    in_thread(lambda: client.force_login(user))
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    screenshots = SCREENSHOTS
    context = headless_chromium.new_context(viewport={"width": 900, "height": 560})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    assert page.goto(live_server.url + URL).status == 200
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "library.png"), full_page=True)
    page.get_by_role("button", name="Get download link Field guide").click()
    page.wait_for_load_state()
    assert "/shop/d/" in page.url
    assert page.get_by_text("File 1").first.is_visible()
    assert in_thread(lambda: DownloadLink.objects.filter(reason="library").count()) == 1
    context.close()
