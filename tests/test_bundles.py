"""Bundles, through the real URLs: a product page that includes other products, bought through
Checkout and the signed webhook; each included product delivered as if bought (links, the
success page, one email, the library, license keys), taken back and given back with the
bundle, never counted as a sale, and the editor's rules in the page editor."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest
from django.core import mail
from django.urls import reverse
from wagtail.models import Page
from wagtail.test.utils.form_data import inline_formset, nested_form_data

from tests.concurrency import run_at_once
from tests.factories import ProductFileFactory, ProductPageFactory, UserFactory
from tests.stripe_fake import event_for, post_event
from tests.test_desk_refunds import refund
from tests.test_fulfillment import needs_postgres
from tests.test_product_admin import edit_url, form_errors, product_data
from tests.test_shop_desk import handoff_get, url
from wagtail_paid_delivery import licenses, product_stats, sale_notices, stats
from wagtail_paid_delivery.fulfillment import fulfill_checkout
from wagtail_paid_delivery.models import (
    BundleItem,
    DownloadEvent,
    DownloadLink,
    OutboundEmail,
    Purchase,
)

S = Purchase.Status
ORIGIN = "http://testserver"
LINK_RE = re.compile(r"http://testserver(/shop/d/[A-Za-z0-9_-]+/)")
SIGNING_KEY = licenses.generate_signing_key()


@pytest.fixture(autouse=True)
def signing_key(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_SIGNING_KEY": SIGNING_KEY,
    }


def include(bundle, *products) -> None:
    for order, product in enumerate(products):
        BundleItem.objects.create(bundle=bundle, product=product, sort_order=order)


@pytest.fixture
def shop(home):
    """A sketch app (license keys), a star atlas (two files), a secret product not in the
    bundle, and the "Studio bundle" that includes the first two for $30."""
    app = ProductPageFactory(parent=home, title="Sketch app", license_activation_limit=2)
    atlas = ProductPageFactory(parent=home, title="Star atlas", files=2, price_amount=2000)
    secret = ProductPageFactory(parent=home, title="Secret", price_amount=9900)
    bundle = ProductPageFactory(parent=home, title="Studio bundle", files=0, price_amount=3000)
    include(bundle, app, atlas)
    return {"app": app, "atlas": atlas, "secret": secret, "bundle": bundle}


def buy(client, fake_stripe, page, capture, email="ada@example.com") -> Purchase:
    """Buy ``page`` through the checkout URL, pay at Stripe, deliver the signed webhook."""
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[page.pk]), HTTP_ORIGIN=ORIGIN
    )
    assert response.status_code == 303
    purchase = Purchase.objects.filter(bundle=None).latest("created_at")
    fake_stripe.pay(purchase.stripe_checkout_session_id, email=email)
    with capture(execute=True):
        event = event_for(fake_stripe.session(purchase.stripe_checkout_session_id))
        assert post_event(client, event).status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == S.PAID
    return purchase


@pytest.fixture
def bought(client, fake_stripe, shop, django_capture_on_commit_callbacks):
    return buy(client, fake_stripe, shop["bundle"], django_capture_on_commit_callbacks)


def included_of(bundle_purchase) -> dict[str, Purchase]:
    return {p.product_title: p for p in Purchase.objects.filter(bundle=bundle_purchase)}


def file_ids(page) -> list[int]:
    return [f.pk for f in page.specific.files.all()]


# Buying -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_buying_a_bundle_grants_each_included_product_as_a_paid_purchase(bought, shop):
    included = included_of(bought)
    assert set(included) == {"Sketch app", "Star atlas"}
    for child in included.values():
        assert child.status == S.PAID and child.paid_at is not None
        assert child.source == Purchase.Source.BUNDLE
        assert child.amount == 0 and child.currency == "USD"
        assert child.email == "ada@example.com"
        assert child.stripe_checkout_session_id is None
    assert included["Sketch app"].product_id == shop["app"].pk
    # The bundle's own price and currency, its own key only when it sells keys (it does not).
    assert (bought.amount, bought.currency) == (3000, "USD")
    assert licenses.license_of(bought) is None
    assert licenses.license_of(included["Sketch app"]) is not None
    assert licenses.license_of(included["Star atlas"]) is None


@pytest.mark.django_db
def test_one_email_with_a_working_link_per_included_product(client, bought, shop):
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    assert OutboundEmail.objects.filter(kind=OutboundEmail.Kind.DELIVERY).count() == 1
    included = included_of(bought)
    key = licenses.key_text(licenses.license_of(included["Sketch app"]))
    assert key in message.body and key in message.alternatives[0][0]
    paths = LINK_RE.findall(message.body)
    assert len(paths) == 2  # the bundle has no files of its own: no link of its own
    for path, title in zip(paths, ["Sketch app", "Star atlas"], strict=True):
        page = client.get(path)
        assert page.status_code == 200
        assert title in page.content.decode()
        # Its receipt is the bundle's: the order number the buyer has, no price of its own.
        assert "Included in" in page.content.decode()
        assert bought.order_number in page.content.decode()
        assert "$0.00" not in page.content.decode()
        token = path.rstrip("/").rsplit("/", 1)[1]
        product = shop["app"] if title == "Sketch app" else shop["atlas"]
        for file_id in file_ids(product):
            assert handoff_get(client, token, file_id).status_code == 200
    assert {link.purchase for link in DownloadLink.objects.all()} == set(included.values())
    served = DownloadEvent.objects.filter(outcome="served")
    assert served.count() == 3


@pytest.mark.django_db
def test_success_page_shows_every_included_product_and_reloads_mint_nothing(client, bought):
    url_ = reverse("wagtail_paid_delivery:success")
    html = client.get(url_, {"session_id": bought.stripe_checkout_session_id}).content.decode()
    assert "Included in your bundle" in html
    assert "Download Sketch app" in html and "Download Star atlas" in html
    key = licenses.key_text(licenses.license_of(included_of(bought)["Sketch app"]))
    assert key in html
    paths = re.findall(r'href="http://testserver(/shop/d/[A-Za-z0-9_-]+/)"', html)
    assert len(paths) == 2
    for path in paths:
        assert client.get(path).status_code == 200
    assert not DownloadLink.objects.filter(purchase=bought).exists()  # no files of its own
    links_before = DownloadLink.objects.count()
    client.get(url_, {"session_id": bought.stripe_checkout_session_id})
    assert DownloadLink.objects.count() == links_before


@pytest.mark.django_db
def test_a_bundle_with_files_of_its_own_sends_its_link_too(
    client, fake_stripe, shop, django_capture_on_commit_callbacks
):
    ProductFileFactory(page=shop["bundle"], title="Bonus poster")
    purchase = buy(client, fake_stripe, shop["bundle"], django_capture_on_commit_callbacks)
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    paths = LINK_RE.findall(message.body)
    assert len(paths) == 3
    assert "Bonus poster" in client.get(paths[0]).content.decode()
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1


@pytest.mark.django_db
def test_library_lists_each_included_product_with_its_own_button(
    client, fake_stripe, shop, django_capture_on_commit_callbacks
):
    user = UserFactory(username="ada", email="ada@example.com")
    client.force_login(user)
    purchase = buy(client, fake_stripe, shop["bundle"], django_capture_on_commit_callbacks)
    html = client.get("/shop/library/").content.decode()
    for child in included_of(purchase).values():
        assert child.user == user
        assert f"/shop/library/{child.public_id}/" in html
    assert "Included in Studio bundle" in html
    atlas = included_of(purchase)["Star atlas"]
    response = client.post(f"/shop/library/{atlas.public_id}/")
    assert response.status_code == 303
    page = client.get(response["Location"]).content.decode()
    assert "File 1" in page and "File 2" in page


# Duplicates and races ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_duplicate_webhooks_and_the_success_page_create_included_purchases_once(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    session_id = bought.stripe_checkout_session_id
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200
        fulfill_checkout(session_id)
        client.get(reverse("wagtail_paid_delivery:success"), {"session_id": session_id})
    assert Purchase.objects.filter(bundle=bought).count() == 2
    assert len([m for m in mail.outbox if m.to == ["ada@example.com"]]) == 1


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_deliveries_create_included_purchases_once(home, fake_stripe):
    from tests.factories import PurchaseFactory
    from tests.stripe_fake import start_checkout

    app = ProductPageFactory(parent=home, title="Sketch app", license_activation_limit=1)
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    bundle = ProductPageFactory(parent=home, title="Studio bundle", files=0, price_amount=3000)
    include(bundle, app, atlas)
    purchase = PurchaseFactory(product=bundle, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    outcomes = sorted(r.outcome for r in run_at_once([lambda: fulfill_checkout(session_id)] * 6))
    assert outcomes == ["already_paid"] * 5 + ["fulfilled"]
    assert Purchase.objects.filter(bundle=purchase).count() == 2
    assert licenses.license_of(Purchase.objects.get(bundle=purchase, product=app)) is not None


# Taken back, given back -------------------------------------------------------------------------


def statuses(bundle_purchase) -> set[str]:
    return set(Purchase.objects.filter(bundle=bundle_purchase).values_list("status", flat=True))


def live_links(bundle_purchase) -> int:
    return DownloadLink.objects.filter(purchase__bundle=bundle_purchase, revoked_at=None).count()


@pytest.mark.django_db
def test_a_refund_webhook_takes_every_included_product_back(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    path = LINK_RE.findall(message.body)[0]
    fake_stripe.refund(bought.stripe_checkout_session_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, fake_stripe.last_event("charge.refunded")).status_code == 200
    bought.refresh_from_db()
    assert bought.status == S.REFUNDED
    assert statuses(bought) == {S.REFUNDED}
    assert live_links(bought) == 0
    assert client.get(path).status_code == 410


@pytest.mark.django_db
def test_a_partial_refund_keeps_access_under_the_default_policy(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    fake_stripe.refund(bought.stripe_checkout_session_id, amount=500)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, fake_stripe.last_event("charge.refunded")).status_code == 200
    bought.refresh_from_db()
    assert (bought.status, bought.amount_refunded) == (S.PAID, 500)
    assert statuses(bought) == {S.PAID}


@pytest.mark.django_db
def test_the_desks_refund_of_the_bundle_takes_every_included_product_back(
    client, admin_client, bought, fake_stripe
):
    response = refund(admin_client, bought, "30.00")
    assert response.status_code == 302
    bought.refresh_from_db()
    assert bought.status == S.REFUNDED
    assert statuses(bought) == {S.REFUNDED}
    assert live_links(bought) == 0


@pytest.mark.django_db
def test_an_included_purchase_cannot_be_refunded_on_its_own(admin_client, bought, fake_stripe):
    child = included_of(bought)["Star atlas"]
    page = admin_client.get(url("refund", child.pk)).content.decode()
    assert "Studio bundle" in page and "act on the bundle" in page
    response = refund(admin_client, child, "1.00", key="0" * 32)
    assert response.status_code == 302
    assert "act on the bundle" in admin_client.get(response["Location"]).content.decode()
    assert not fake_stripe.calls("post", "/v1/refunds")
    child.refresh_from_db()
    assert child.status == S.PAID


@pytest.mark.django_db
def test_revoke_of_the_bundle_in_the_desk_revokes_all(admin_client, bought):
    response = admin_client.post(
        url("revoke", bought.pk), {"how": "revoke", "reason": "chargeback by phone"}
    )
    assert response.status_code == 302
    assert statuses(bought) == {S.REVOKED}
    assert live_links(bought) == 0


@pytest.mark.django_db
def test_suspend_and_restore_of_the_bundle_moves_all(admin_client, bought):
    admin_client.post(url("revoke", bought.pk), {"how": "suspend", "reason": "checking"})
    assert statuses(bought) == {S.DISPUTED}
    child = included_of(bought)["Sketch app"]
    # An included product is not restored alone while its bundle is suspended.
    assert "restore the bundle" in admin_client.get(url("restore", child.pk)).content.decode()
    admin_client.post(url("restore", child.pk), {})
    child.refresh_from_db()
    assert child.status == S.DISPUTED
    admin_client.post(url("restore", bought.pk), {})
    assert statuses(bought) == {S.PAID}


@pytest.mark.django_db
def test_one_included_product_revoked_alone_stays_revoked_when_the_bundle_is_restored(
    admin_client, bought
):
    atlas = included_of(bought)["Star atlas"]
    admin_client.post(url("revoke", atlas.pk), {"how": "revoke", "reason": "asked for it"})
    assert dict(Purchase.objects.filter(bundle=bought).values_list("product_title", "status")) == {
        "Sketch app": S.PAID,
        "Star atlas": S.REVOKED,
    }
    admin_client.post(url("revoke", bought.pk), {"how": "suspend", "reason": "checking"})
    admin_client.post(url("restore", bought.pk), {})
    atlas.refresh_from_db()
    assert atlas.status == S.REVOKED
    assert included_of(bought)["Sketch app"].status == S.PAID


@pytest.mark.django_db
def test_a_dispute_suspends_all_and_a_won_dispute_restores_all(
    client, bought, fake_stripe, django_capture_on_commit_callbacks
):
    session_id = bought.stripe_checkout_session_id
    fake_stripe.dispute(session_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            post_event(client, fake_stripe.last_event("charge.dispute.created")).status_code == 200
        )
    assert statuses(bought) == {S.DISPUTED}
    fake_stripe.close_dispute(session_id, "won")
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            post_event(client, fake_stripe.last_event("charge.dispute.closed")).status_code == 200
        )
    assert statuses(bought) == {S.PAID}


# What an attacker might try ---------------------------------------------------------------------


@pytest.mark.django_db
def test_an_included_products_link_reaches_only_that_products_files(client, bought, shop):
    [message] = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    app_token = LINK_RE.findall(message.body)[0].rstrip("/").rsplit("/", 1)[1]
    for other in ("atlas", "secret", "bundle"):
        for file_id in file_ids(shop[other]):
            assert handoff_get(client, app_token, file_id).status_code == 404
    secret_file = ProductFileFactory(page=shop["secret"], title="Another secret")
    assert handoff_get(client, app_token, secret_file.pk).status_code == 404


@pytest.mark.django_db
def test_a_product_added_to_the_bundle_after_the_sale_is_not_granted(client, bought, shop):
    include_later = BundleItem.objects.create(bundle=shop["bundle"], product=shop["secret"])
    assert include_later.pk
    fulfill_checkout(bought.stripe_checkout_session_id)
    assert set(included_of(bought)) == {"Sketch app", "Star atlas"}


# Not a sale -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_included_purchases_do_not_inflate_sales_revenue_or_sale_notices(bought, shop):
    figures = stats.dashboard(livemode=False)
    assert sum(day.sales for day in figures.days) == 1
    assert [(r.currency, r.amount) for r in figures.revenue] == [("USD", 3000)]
    for child in included_of(bought).values():
        assert not sale_notices.is_sale(child)
    assert (
        OutboundEmail.objects.filter(kind=OutboundEmail.Kind.NEW_SALE)
        .values("purchase")
        .distinct()
        .count()
        <= 1
    )
    app_figures = product_stats.product_stats(shop["app"])
    assert app_figures.sales == 0


@pytest.mark.django_db
def test_export_counts_the_bundles_money_once(admin_client, bought):
    response = admin_client.get(url("index") + "?export=csv")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert sorted((row["Product title"], row["Source"]) for row in rows) == [
        ("Sketch app", "bundle"),
        ("Star atlas", "bundle"),
        ("Studio bundle", "checkout"),
    ]
    assert sum(Decimal(row["Price"]) for row in rows) == Decimal("30")


# The desk ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_inspect_view_links_a_bundle_and_its_included_purchases(admin_client, bought):
    html = admin_client.get(url("inspect", bought.pk)).content.decode()
    assert "Included products" in html
    for child in included_of(bought).values():
        assert url("inspect", child.pk) in html
        child_html = admin_client.get(url("inspect", child.pk)).content.decode()
        assert url("inspect", bought.pk) in child_html
        assert "Studio bundle" in child_html
        assert url("refund", child.pk) not in child_html


@pytest.mark.django_db
def test_deleting_a_product_included_in_a_sold_bundle_is_refused(admin_client, bought, shop):
    response = admin_client.post(reverse("wagtailadmin_pages:delete", args=[shop["atlas"].pk]))
    assert response.status_code == 302
    assert Page.objects.filter(pk=shop["atlas"].pk).exists()
    followed = admin_client.get(response["Location"]).content.decode()
    assert "cannot be deleted" in followed


@pytest.mark.django_db
def test_an_unsold_bundles_product_may_be_deleted(admin_client, shop):
    response = admin_client.post(reverse("wagtailadmin_pages:delete", args=[shop["atlas"].pk]))
    assert response.status_code == 302
    assert not Page.objects.filter(pk=shop["atlas"].pk).exists()
    assert list(BundleItem.objects.values_list("product__title", flat=True)) == ["Sketch app"]


# The editor -------------------------------------------------------------------------------------


def bundle_form(page, products, *, publish=True) -> dict:
    data = product_data(
        [],
        publish=publish,
        title=page.title,
        slug=page.slug,
        price_amount="30.00",
    )
    rows = [{"product": p.pk, "ORDER": i} for i, p in enumerate(products)]
    data.update(nested_form_data({"bundle_items": inline_formset(rows)}))
    return data


def row_errors(response) -> list[str]:
    formset = response.context["form"].formsets["bundle_items"]
    return [str(e) for form in formset.forms for e in form.errors.get("product", [])]


@pytest.mark.django_db
def test_editor_publishes_a_bundle_without_files_of_its_own(admin_client, home):
    app = ProductPageFactory(parent=home, title="Sketch app")
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    bundle = ProductPageFactory(parent=home, title="Bundle", files=0, live=False)
    response = admin_client.post(edit_url(bundle), bundle_form(bundle, [atlas, app]))
    assert response.status_code == 302, form_errors(response)
    bundle.refresh_from_db()
    assert bundle.live
    assert [p.title for p in bundle.specific.included_products] == ["Star atlas", "Sketch app"]
    assert bundle.specific.is_purchasable
    html = admin_client.get(edit_url(bundle)).content.decode()
    assert "Included products (bundle)" in html


@pytest.mark.django_db
def test_editor_rules_each_refused_with_a_clear_message(admin_client, home):
    app = ProductPageFactory(parent=home, title="Sketch app")
    draft = ProductPageFactory(parent=home, title="Draft product", live=False)
    other_bundle = ProductPageFactory(parent=home, title="Other bundle", files=0)
    include(other_bundle, app)
    bundle = ProductPageFactory(parent=home, title="Bundle", files=0, live=False)

    cases = [
        ([bundle], "A bundle cannot include itself."),
        ([home], "“Shop” is not a product page: only products can be included."),
        ([other_bundle], "“Other bundle” is a bundle itself"),
        ([draft], "“Draft product” is not published"),
        ([app, app], "“Sketch app” is included twice."),
    ]
    for chosen, expected in cases:
        response = admin_client.post(edit_url(bundle), bundle_form(bundle, chosen))
        assert response.status_code == 200
        assert any(expected in e for e in row_errors(response)), (expected, row_errors(response))
    # A draft may include an unpublished product; publishing then refuses it.
    response = admin_client.post(edit_url(bundle), bundle_form(bundle, [draft], publish=False))
    assert response.status_code == 302


@pytest.mark.django_db
def test_a_product_inside_a_bundle_cannot_become_a_bundle(admin_client, home):
    app = ProductPageFactory(parent=home, title="Sketch app")
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    bundle = ProductPageFactory(parent=home, title="Studio bundle", files=0)
    include(bundle, app)
    # app is in a bundle: making it include atlas would nest bundles (or, with the bundle, cycle).
    response = admin_client.post(edit_url(app), bundle_form(app, [atlas]))
    errors = form_errors(response)
    assert "This product is included in “Studio bundle”" in " ".join(errors["__all__"])
    response = admin_client.post(edit_url(app), bundle_form(app, [bundle]))
    assert any("is a bundle itself" in e for e in row_errors(response))


@pytest.mark.django_db
def test_view_as_this_buyer_shows_the_bundles_products_without_making_links(admin_client, bought):
    links_before = DownloadLink.objects.count()
    html = admin_client.get(
        reverse("wagtail_paid_delivery_admin:view_as", args=[bought.pk])
    ).content.decode()
    assert "Included in your bundle" in html
    assert "Download Star atlas" in html
    assert DownloadLink.objects.count() == links_before


@pytest.mark.django_db
def test_resend_from_the_bundles_page_sends_every_included_products_link(
    client, bought, shop, django_capture_on_commit_callbacks
):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("wagtail_paid_delivery:resend"),
            {"email": "ada@example.com", "product": shop["bundle"].pk},
        )
    assert response.status_code in (200, 303)
    [message] = mail.outbox
    for child in included_of(bought).values():
        assert DownloadLink.objects.filter(purchase=child, reason="resend").count() == 1
        assert child.product_title in message.body
