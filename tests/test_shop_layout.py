"""The buyer pages in the site's own layout, with the way home and the contact line (issue 13).

Every buyer page is reached through its real URL twice: in the app's own layout (the default)
and in a site's base template (tests/testapp/templates/testapp/site_base.html) whose content block
is not called "content" and which has blocks named "content" and "header" of its own.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    DeliveryCopyFactory,
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
)
from tests.test_copy_preview import COPY_FIELDS
from tests.test_success_page import start_checkout, thanks
from wagtail_paid_delivery import delivery, links
from wagtail_paid_delivery.checks import check_layout
from wagtail_paid_delivery.models import DeliveryCopy, DownloadLink
from wagtail_paid_delivery.views.responses import CSP_HEADER, strict_csp_policy

pytestmark = pytest.mark.django_db

ORIGIN = "http://testserver"
DEFAULTS = {
    "STRIPE_SECRET_KEY": "sk_test_tests",
    "STRIPE_WEBHOOK_SECRETS": ["whsec_tests"],
    "INSTALLATION_ID": "tests",
}
SITE_LAYOUT = {
    **DEFAULTS,
    "LAYOUT_TEMPLATE": "testapp/site_base.html",
    "LAYOUT_BLOCK": "page_body",
}
CONTACT = "Questions? Write to help@shop.example or see https://shop.example/help."


@pytest.fixture(autouse=True)
def _from_address(settings):
    settings.DEFAULT_FROM_EMAIL = "Star Shop <orders@shop.example>"


@pytest.fixture
def shop(home):
    copy = DeliveryCopyFactory(name="Atlas copy", contact_line=CONTACT)
    product = ProductPageFactory(parent=home, title="Star atlas", files=0, delivery_copy=copy)
    file = ProductFileFactory(
        page=product, title="Atlas", file=ContentFile(b"atlas" * 100, name="atlas.pdf")
    )
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    return product, file, purchase


def issue(purchase, **changes) -> str:
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    if changes:
        DownloadLink.objects.filter(pk=issued.link.pk).update(**changes)
    return reverse("wagtail_paid_delivery:download", args=[issued.token])


def buy(client, page):
    return client.post(
        reverse("wagtail_paid_delivery:checkout", args=[page.pk]), HTTP_ORIGIN=ORIGIN
    )


# One function per buyer page: (client, shop, fake_stripe) -> (response, expected status, words).


def success_paid(client, shop, fake_stripe):
    purchase = start_checkout(client, shop[0])
    fake_stripe.pay(purchase.stripe_checkout_session_id, email="ada@example.com")
    return thanks(client, purchase.stripe_checkout_session_id), 200, "Go to your downloads"


def success_neutral(client, shop, fake_stripe):
    return client.get(reverse("wagtail_paid_delivery:success")), 200, "Check your email"


def download(client, shop, fake_stripe):
    return client.get(issue(shop[2])), 200, ">Download<span"


def expired(client, shop, fake_stripe):
    past = timezone.now() - timedelta(hours=1)
    return client.get(issue(shop[2], expires_at=past)), 410, "This link has expired"


def used_up(client, shop, fake_stripe):
    url = issue(shop[2], download_limit=0)
    return client.get(url), 410, "This link has been used up"


def revoked(client, shop, fake_stripe):
    url = issue(shop[2], revoked_at=timezone.now())
    return client.get(url), 410, "This link is no longer valid"


def resend_form(client, shop, fake_stripe):
    return client.get(reverse("wagtail_paid_delivery:resend")), 200, "Send me fresh links"


def resend_done(client, shop, fake_stripe):
    response = client.post(reverse("wagtail_paid_delivery:resend"), {"email": "ada@example.com"})
    return response, 200, "If that address has a purchase that can still be downloaded"


def library(client, shop, fake_stripe):
    user = get_user_model().objects.create_user("ada", "ada@example.com", "pw")
    PurchaseFactory(paid=True, product=shop[0], user=user)
    client.force_login(user)
    return client.get(reverse("wagtail_paid_delivery:library")), 200, "Get download link"


def checkout_unavailable(client, shop, fake_stripe):
    empty = ProductPageFactory(parent=shop[0].get_parent(), title="Empty box", files=0)
    return buy(client, empty), 409, "Checkout is unavailable right now"


def checkout_limited(client, shop, fake_stripe):
    empty = ProductPageFactory(parent=shop[0].get_parent(), title="Empty box", files=0)
    with override_settings(WAGTAIL_PAID_DELIVERY={**_current(), "CHECKOUT_RATE_LIMIT": (1, 600)}):
        buy(client, empty)
        return buy(client, empty), 429, "Please wait a moment"


def file_unavailable(client, shop, fake_stripe):
    product, file, purchase = shop
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, file.pk])
    handoff = client.post(button)["Location"]
    file.file.storage.delete(file.file.name)
    return client.get(handoff), 503, "This file is temporarily unavailable"


def product_page(client, shop, fake_stripe):
    return client.get(shop[0].url), 200, "Buy now for"


def _current():
    from django.conf import settings

    return settings.WAGTAIL_PAID_DELIVERY


PAGES = [
    success_paid,
    success_neutral,
    download,
    expired,
    used_up,
    revoked,
    resend_form,
    resend_done,
    library,
    checkout_unavailable,
    checkout_limited,
    file_unavailable,
    product_page,
]


def contact_and_home(html: str) -> None:
    """The shop's foot: the contact line with its addresses linked, and the way home."""
    assert (
        'Questions? Write to <a href="mailto:help@shop.example">help@shop.example</a>' in html
        # Pages that do not know the product use the default copy: its empty contact line says
        # DEFAULT_FROM_EMAIL's address.
        or 'Questions about your order? Write to <a href="mailto:orders@shop.example">' in html
    )
    assert re.search(r'<p class="pd-home"><a href="/" rel="home">Back to Shop</a></p>', html)


@pytest.mark.parametrize("visit", PAGES, ids=[p.__name__ for p in PAGES])
def test_every_buyer_page_renders_inside_the_sites_layout(client, shop, fake_stripe, visit):
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        response, status, words = visit(client, shop, fake_stripe)
    assert response.status_code == status
    html = response.content.decode()
    # The site's page, with the app's page in its "page_body" block.
    assert html.startswith("<!DOCTYPE html>") and html.count("<html") == 1
    main = html.split('<main id="site-main">', 1)[1].split("</main>", 1)[0]
    assert '<div class="pd-page' in main and words in main
    assert "site placeholder" not in html
    # The app's blocks named like the site's ("content", "header") stay out of the site's.
    assert '<aside id="site-aside">Site sidebar stays</aside>' in html
    assert "Site nav of Shop" in html
    # The page's title goes in the site's title block, with the site's suffix.
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert title.endswith("| Site of Tests") and "Site default title" not in title
    contact_and_home(main)


@pytest.mark.parametrize("visit", PAGES, ids=[p.__name__ for p in PAGES])
def test_every_buyer_page_still_renders_in_the_apps_own_layout(client, shop, fake_stripe, visit):
    response, status, words = visit(client, shop, fake_stripe)
    assert response.status_code == status
    html = response.content.decode()
    assert '<body class="pd-layout' in html and '<main id="main" class="pd-main">' in html
    assert words in html and "Site of Tests" not in html
    contact_and_home(html)


def test_the_strict_csp_holds_on_a_download_page_in_a_layout_with_inline_script(client, shop):
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        response = client.get(issue(shop[2]))
    html = response.content.decode()
    policy = response[CSP_HEADER]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert policy == strict_csp_policy(nonce)
    assert "unsafe-inline" not in policy and "'self'" not in policy.split(";")[1]
    # The site's inline script and style are there without the nonce: the browser refuses them.
    assert "<script>document.documentElement.setAttribute" in html
    assert "<style>body { background: hotpink; }</style>" in html
    # Only the app's own scripts and styles (the receipt's) carry it.
    assert html.count(f'nonce="{nonce}"') == html.count(f'<style nonce="{nonce}">') + 2
    assert f'local-time.js" nonce="{nonce}"' in html
    assert f'download-count.js" nonce="{nonce}"' in html


def test_the_strict_csp_holds_on_the_success_page_in_the_sites_layout(client, shop, fake_stripe):
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        response, _, _ = success_paid(client, shop, fake_stripe)
    policy = response[CSP_HEADER]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert policy == strict_csp_policy(nonce)
    assert "<script>document.documentElement" in response.content.decode()


def test_the_layout_gets_page_none_and_the_product_page_its_page(client, shop):
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        download_html = client.get(issue(shop[2])).content.decode()
        product_html = client.get(shop[0].url).content.decode()
    # The site's guarded {% pageurl page %}: the site root without a page, the page with one.
    assert '<nav id="site-nav"><a href="/">' in download_html
    assert f'<nav id="site-nav"><a href="{shop[0].url}">' in product_html


def test_a_layout_that_fails_falls_back_to_the_apps_own_and_says_why(client, shop, caplog):
    broken = {**DEFAULTS, "LAYOUT_TEMPLATE": "testapp/broken_base.html"}
    with override_settings(WAGTAIL_PAID_DELIVERY=broken), caplog.at_level(logging.ERROR):
        response = client.get(issue(shop[2]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<body class="pd-layout' in html and ">Download<span" in html
    assert any("testapp/broken_base.html" in r.getMessage() for r in caplog.records)


def test_a_layout_that_fails_raises_with_debug_on(client, shop):
    broken = {**DEFAULTS, "LAYOUT_TEMPLATE": "testapp/broken_base.html"}
    client.raise_request_exception = True
    with (
        override_settings(WAGTAIL_PAID_DELIVERY=broken, DEBUG=True),
        pytest.raises(ValueError, match="pageurl tag expected a Page object"),
    ):
        client.get(issue(shop[2]))


# The settings' system checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "block", "check_id", "words"),
    [
        ("testapp/no_such_base.html", "content", "E016", "cannot be loaded"),
        ("testapp/site_base.html", "main", "E017", "has no block 'main'"),
        ("testapp/site_base.html", "page body", "E017", "letters, digits and underscores"),
        ("testapp/site_base.html", "x %}{% debug", "E017", "letters, digits and underscores"),
        ("testapp/site_base.html", "title", "E017", "cannot be 'title'"),
        ("testapp/site_base.html", 3, "E017", "is 3"),
    ],
)
def test_a_layout_setting_that_cannot_work_is_a_system_check_error(layout, block, check_id, words):
    settings = {**DEFAULTS, "LAYOUT_TEMPLATE": layout, "LAYOUT_BLOCK": block}
    with override_settings(WAGTAIL_PAID_DELIVERY=settings):
        errors = check_layout()
    assert [e.id for e in errors] == [f"wagtail_paid_delivery.{check_id}"]
    assert words in errors[0].msg


def test_the_default_and_a_good_site_layout_pass_the_checks():
    assert check_layout() == []
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        assert check_layout() == []
        call_command("check", "--fail-level", "ERROR")


def test_a_block_of_a_template_the_layout_extends_counts(tmp_path, settings):
    (tmp_path / "child.html").write_text('{% extends "testapp/site_base.html" %}')
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(tmp_path)]}]
    with override_settings(WAGTAIL_PAID_DELIVERY={**SITE_LAYOUT, "LAYOUT_TEMPLATE": "child.html"}):
        assert check_layout() == []


# The contact line -------------------------------------------------------------------------------


def test_the_contact_line_is_escaped_and_only_addresses_become_links(client, shop):
    DeliveryCopy.objects.filter(name="Atlas copy").update(
        contact_line='<script>x</script> <b>bold</b> help@shop.example "quoted"'
    )
    html = client.get(issue(shop[2])).content.decode()
    foot = html.split('<footer class="pd-shop-footer">', 1)[1].split("</footer>", 1)[0]
    assert "&lt;script&gt;x&lt;/script&gt; &lt;b&gt;bold&lt;/b&gt;" in foot
    assert '<a href="mailto:help@shop.example">help@shop.example</a>' in foot
    assert "<script>" not in foot and "<b>" not in foot


def test_an_empty_contact_line_says_the_from_address(client, shop, settings):
    settings.DEFAULT_FROM_EMAIL = "Star Shop <orders@shop.example>"
    DeliveryCopy.objects.filter(name="Atlas copy").update(contact_line="")
    html = client.get(issue(shop[2])).content.decode()
    assert (
        'Questions about your order? Write to <a href="mailto:orders@shop.example">'
        "orders@shop.example</a>." in html
    )


def test_the_contact_line_is_in_the_copy_preview_in_unsaved_words(admin_client):
    copy = DeliveryCopyFactory(name="Shop copy")
    url = reverse(
        "wagtailsnippets_wagtail_paid_delivery_deliverycopy:preview_on_edit", args=[copy.pk]
    )
    data = {
        "name": "Shop copy",
        "contact_line": "Unsaved: call desk@shop.example",
        **{field: str(getattr(copy, field)) for field in COPY_FIELDS},
    }
    assert admin_client.post(url, data).json()["is_valid"] is True
    for mode in ("success", "download", "expired", "resend_done"):
        html = admin_client.get(url, {"mode": mode}).content.decode()
        assert 'Unsaved: call <a href="mailto:desk@shop.example">desk@shop.example</a>' in html, (
            mode
        )


def test_the_contact_line_is_on_the_copy_edit_form(admin_client):
    copy = DeliveryCopyFactory(name="Shop copy")
    url = reverse("wagtailsnippets_wagtail_paid_delivery_deliverycopy:edit", args=[copy.pk])
    assert 'name="contact_line"' in admin_client.get(url).content.decode()


# Times a buyer can read ---------------------------------------------------------------------------


def test_the_download_page_shows_the_expiry_with_its_zone_in_a_time_element(client, shop):
    html = client.get(issue(shop[2])).content.decode()
    link = DownloadLink.objects.get()
    iso = link.expires_at.astimezone(UTC).isoformat(timespec="seconds")
    element = re.search(r'<time datetime="([^"]+)" data-pd-local-time>([^<]+)</time>', html)
    assert element.group(1) == iso and iso.endswith("+00:00")
    assert element.group(2).endswith(" UTC")
    assert '<span class="pd-relative-time">(in 23\xa0hours)</span>' in html


@override_settings(TIME_ZONE="Europe/Paris")
def test_the_expiry_names_a_zone_other_than_utc_with_its_offset(client, shop):
    url = issue(shop[2], expires_at=datetime(2031, 1, 15, 9, 30, tzinfo=UTC))
    html = client.get(url).content.decode()
    assert 'datetime="2031-01-15T09:30:00+00:00"' in html
    assert "Jan. 15, 2031, 10:30 a.m. CET (UTC+01:00)</time>" in html
    assert re.search(r"\(in \d+\xa0years?\)", html)


def test_the_delivery_email_says_the_zone_and_no_relative_time(shop, settings):
    settings.TIME_ZONE = "Europe/Paris"
    purchase = shop[2]

    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=datetime(2031, 1, 15, 9, 30, tzinfo=UTC)
    )
    issued.link.refresh_from_db()
    message = delivery.build_delivery_email(purchase, issued)
    html = next(c for c, kind in message.alternatives if kind == "text/html")
    zone = "Jan. 15, 2031, 10:30 a.m. CET (UTC+01:00)"
    assert f"Link valid until: {zone}" in message.body
    assert "<time" not in message.body and "(in " not in message.body
    assert "<time datetime=" in html and zone in html and "pd-relative-time" not in html


def test_the_pd_time_filter_is_the_one_way_templates_show_a_time():
    from django.template import engines

    moment = timezone.now() + timedelta(days=2, minutes=5)
    html = (
        engines["django"]
        .from_string("{% load paid_delivery %}{{ when|pd_time }}")
        .render({"when": moment})
    )
    assert html.startswith('<time datetime="') and "UTC</time>" in html
    assert html.endswith('<span class="pd-relative-time">(in 2\xa0days)</span>')


def test_no_contact_line_when_the_from_address_reaches_nobody(client, shop, settings):
    settings.DEFAULT_FROM_EMAIL = "webmaster@localhost"  # Django's default
    DeliveryCopy.objects.filter(name="Atlas copy").update(contact_line="")
    html = client.get(issue(shop[2])).content.decode()
    assert 'class="pd-contact"' not in html and "webmaster@localhost" not in html
    assert "Back to Shop" in html


def test_the_copy_preview_renders_in_the_sites_layout_without_a_real_page(
    admin_client, home, settings
):
    # The "checkout unavailable" preview has a stand-in product page: the layout gets None, so
    # its guarded {% pageurl page %} works, even with DEBUG on (where a failure would raise).
    settings.DEBUG = True
    copy = DeliveryCopyFactory(name="Shop copy")
    url = reverse(
        "wagtailsnippets_wagtail_paid_delivery_deliverycopy:preview_on_edit", args=[copy.pk]
    )
    data = {"name": "Shop copy", **{field: str(getattr(copy, field)) for field in COPY_FIELDS}}
    with override_settings(WAGTAIL_PAID_DELIVERY=SITE_LAYOUT):
        assert admin_client.post(url, data).json()["is_valid"] is True
        for mode in ("checkout_unavailable", "download", "success"):
            html = admin_client.get(url, {"mode": mode}).content.decode()
            assert "| Site of Tests</title>" in html and '<nav id="site-nav"><a href="/">' in html
