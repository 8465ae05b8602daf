"""The buyer's receipt and order number, through the real URLs: the success page, the delivery
email (text and HTML), the download page, the shop desk's search, inspect view and export; with
a discount, tax (added and included), a complimentary copy, and a purchase paid before the
receipt's migration.

Decisions: the receipt is recorded at fulfillment from the one Stripe call it already makes
(the session with its PaymentIntent and charge expanded), so no page asks Stripe; the breakdown
(subtotal, discount, tax) shows only when Checkout applied a discount or tax; an order number is
random and unambiguous (``order_numbers``) and the desk finds it however a buyer reads it out.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.core import mail
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings
from django.urls import reverse
from openpyxl import load_workbook

from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.stripe_fake import event_for, post_event
from tests.test_success_page import start_checkout, thanks
from wagtail_paid_delivery import links, order_numbers
from wagtail_paid_delivery.models import Purchase

pytestmark = pytest.mark.django_db

#: An order number as shown: ten symbols without 0, 1, I, L, O or U, in two groups.
NUMBER = re.compile(r"\b[2-9A-HJKMNP-TV-Z]{5}-[2-9A-HJKMNP-TV-Z]{5}\b")
DESK = "wagtail_paid_delivery_purchases"


@pytest.fixture
def product(home):
    page = ProductPageFactory(parent=home, title="Field guide", price_amount=1250, files=0)
    ProductFileFactory(page=page, title="Guide (PDF)")
    ProductFileFactory(page=page, title="Maps (ZIP)")
    return page


def buy(client, product, fake_stripe, capture, **payment):
    """Check out, pay at Stripe (``payment``: discount, tax), webhook delivered: the purchase."""
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id, email="ada@example.com", **payment)
    with capture(execute=True):
        assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    return purchase


def text_of(html: str) -> str:
    """The page's words, tags dropped and spaces collapsed, to read it as a buyer would."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def receipt_text(html: str) -> str:
    section = re.search(r'<section class="pd-receipt".*?</section>', html, re.S)
    assert section, "no receipt on the page"
    return text_of(section.group(0))


def download_page(client, purchase):
    issued = links.issue_link(purchase, reason="admin")
    response = client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    assert response.status_code == 200
    return response.content.decode()


# The success page, the email and the download page -------------------------------------------


def test_success_page_shows_the_receipt_recorded_at_fulfillment(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, fake_stripe, django_capture_on_commit_callbacks)
    charge_id = fake_stripe.payment_intent(purchase.stripe_checkout_session_id)["latest_charge"]
    assert NUMBER.fullmatch(purchase.order_number)
    assert (purchase.amount_total, purchase.paid_currency) == (1250, "USD")
    assert purchase.receipt_url == f"https://pay.stripe.com/receipts/payment/{charge_id}"
    calls = len(fake_stripe.requests)

    html = thanks(client, purchase.stripe_checkout_session_id).content.decode()

    receipt = receipt_text(html)
    assert f"Order number {purchase.order_number}" in receipt
    assert "Product Field guide Guide (PDF) Maps (ZIP)" in receipt
    assert "Total paid $12.50" in receipt
    assert "Subtotal" not in receipt and "Discount" not in receipt and "Tax" not in receipt
    paid = purchase.paid_at.astimezone()
    assert f'datetime="{paid.isoformat()}"' in html or f"{paid:%Y}" in receipt
    assert f'href="{purchase.receipt_url}" rel="noopener noreferrer"' in html
    assert len(fake_stripe.requests) == calls  # the page asked Stripe nothing


def test_discount_and_tax_are_itemised_on_every_receipt(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(
        client,
        product,
        fake_stripe,
        django_capture_on_commit_callbacks,
        amount_discount=250,
        amount_tax=200,
    )
    assert (purchase.amount_subtotal, purchase.amount_discount) == (1250, 250)
    assert (purchase.amount_tax, purchase.amount_total) == (200, 1200)
    expected = "Subtotal $12.50 Discount \u2212$2.50 Tax $2.00 Total paid $12.00"

    success = receipt_text(thanks(client, purchase.stripe_checkout_session_id).content.decode())
    assert expected in success

    (message,) = mail.outbox
    body = " ".join(message.body.split())
    assert f"Order number: {purchase.order_number}" in body
    assert "Subtotal: $12.50 Discount: \u2212$2.50 Tax: $2.00 Total paid: $12.00" in body
    assert f"Stripe's receipt for this payment: {purchase.receipt_url}" in body
    html, _mimetype = message.alternatives[0]
    html_text = text_of(html)
    assert f"Order number {purchase.order_number}" in html_text
    assert expected in html_text
    assert f'href="{purchase.receipt_url}"' in html

    download = download_page(client, purchase)
    receipt = receipt_text(download)
    assert expected in receipt and purchase.order_number in receipt
    # The download page lists the files with their buttons; its receipt does not repeat them.
    assert "Guide (PDF)" not in receipt and download.count("Guide (PDF)") >= 1


def test_tax_included_in_the_price_is_shown_but_not_added(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(
        client,
        product,
        fake_stripe,
        django_capture_on_commit_callbacks,
        amount_tax=208,
        tax_inclusive=True,
    )
    receipt = receipt_text(thanks(client, purchase.stripe_checkout_session_id).content.decode())
    assert "Subtotal $12.50 Tax included $2.08 Total paid $12.50" in receipt


def test_a_full_discount_paid_nothing_and_says_so(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(
        client, product, fake_stripe, django_capture_on_commit_callbacks, amount_discount=1250
    )
    receipt = receipt_text(download_page(client, purchase))
    assert "Subtotal $12.50 Discount \u2212$12.50 Total paid $0.00" in receipt


def test_receipt_keeps_the_currency_charged_and_its_decimals(
    client, home, fake_stripe, django_capture_on_commit_callbacks
):
    product = ProductPageFactory(parent=home, title="Kanji deck", price_amount=1500, currency="JPY")
    purchase = buy(client, product, fake_stripe, django_capture_on_commit_callbacks)
    assert purchase.paid_currency == "JPY"
    assert "Total paid ¥1,500" in receipt_text(download_page(client, purchase))


def test_a_complimentary_copy_says_so_with_no_amount(
    admin_client, product, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse(f"{DESK}:grant"),
            {"product": product.pk, "email": "press@example.com", "reason": "Review copy"},
        )
    assert response.status_code == 302
    purchase = Purchase.objects.get()
    assert NUMBER.fullmatch(purchase.order_number)

    receipt = receipt_text(download_page(admin_client, purchase))
    assert f"Order number {purchase.order_number}" in receipt
    assert "Amount Complimentary" in receipt
    assert "$" not in receipt and "Stripe" not in receipt
    (message,) = mail.outbox
    body = " ".join(message.body.split())
    assert "Amount: Complimentary" in body and "$" not in body
    assert "Complimentary" in text_of(message.alternatives[0][0])


def test_receipt_text_is_escaped(client, home, fake_stripe, django_capture_on_commit_callbacks):
    product = ProductPageFactory(parent=home, title="<script>x</script> guide", files=0)
    ProductFileFactory(page=product, title="<img src=x onerror=alert(1)>")
    purchase = buy(client, product, fake_stripe, django_capture_on_commit_callbacks)
    html = thanks(client, purchase.stripe_checkout_session_id).content.decode()
    assert "&lt;script&gt;x&lt;/script&gt; guide" in html and "<script>x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    email_html = mail.outbox[0].alternatives[0][0]
    assert "<img src=x" not in email_html and "<script>x" not in email_html


def test_only_web_addresses_are_kept_as_the_stripe_receipt(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    """A receipt URL is rendered as a link: nothing but http(s) is ever stored."""
    purchase = start_checkout(client, product)
    session_id = purchase.stripe_checkout_session_id
    fake_stripe.pay(session_id)
    charge_id = fake_stripe.payment_intent(session_id)["latest_charge"]
    fake_stripe.charges[charge_id]["receipt_url"] = "javascript:alert(document.cookie)"
    html = thanks(client, session_id).content.decode()
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID and purchase.receipt_url == ""
    assert "javascript:" not in html and "Stripe's receipt" not in html
    assert "Total paid $12.50" in receipt_text(html)


# Order numbers --------------------------------------------------------------------------------


def test_order_numbers_are_unambiguous_unique_and_random(home):
    numbers = {order_numbers.new_order_number() for _ in range(2000)}
    assert len(numbers) == 2000
    assert all(NUMBER.fullmatch(n) for n in numbers)
    assert not set("01ILOU") & set("".join(numbers))
    product = ProductPageFactory(parent=home)
    first, second = PurchaseFactory(product=product), PurchaseFactory(product=product)
    assert first.order_number != second.order_number
    # Not derived from the id: consecutive purchases share no visible sequence.
    assert first.order_number[:5] != second.order_number[:5] or (
        first.order_number[-5:] != second.order_number[-5:]
    )


@override_settings(WAGTAIL_PAID_DELIVERY={"ORDER_NUMBER_PREFIX": "SHOP-"})
def test_the_prefix_setting_begins_every_new_number(home):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    assert purchase.order_number.startswith("SHOP-")
    assert NUMBER.fullmatch(purchase.order_number.removeprefix("SHOP-"))


# The shop desk --------------------------------------------------------------------------------


@pytest.fixture
def shop(home):
    product = ProductPageFactory(parent=home, title="Field guide")
    ada = PurchaseFactory(product=product, paid=True, email="ada@example.com")
    PurchaseFactory(product=product, paid=True, email="bob@example.com")
    return ada


@override_settings(WAGTAIL_PAID_DELIVERY={"ORDER_NUMBER_PREFIX": "PD-"})
def test_desk_finds_a_purchase_by_its_order_number_however_it_is_typed(admin_client, home):
    ada = PurchaseFactory(product=ProductPageFactory(parent=home), email="ada@example.com")
    PurchaseFactory(product=ada.product, email="bob@example.com")
    number = ada.order_number  # PD-XXXXX-XXXXX
    code = number.removeprefix("PD-")
    for query in (
        number,
        number.lower(),
        code,
        code.replace("-", ""),
        code.replace("-", " ").lower(),
        f" pd {code[:3]} {code[3:]} ",
        f"OLD-{code}",  # an older prefix: the code is what counts
        code[:5],  # a part of it
    ):
        response = admin_client.get(reverse(f"{DESK}:index"), {"q": query})
        html = response.content.decode()
        assert "ada@example.com" in html and "bob@example.com" not in html, query
    response = admin_client.get(reverse(f"{DESK}:index"), {"q": "ZZZZZ-ZZZZZ"})
    assert "ada@example.com" not in response.content.decode()


def test_inspect_view_and_exports_show_the_order_number(admin_client, shop):
    inspect = admin_client.get(reverse(f"{DESK}:inspect", args=[shop.pk])).content.decode()
    assert "Order number" in inspect and shop.order_number in inspect

    response = admin_client.get(reverse(f"{DESK}:index"), {"export": "csv"})
    text = b"".join(response.streaming_content).decode()
    rows = {row["Buyer email"]: row for row in csv.DictReader(io.StringIO(text))}
    assert rows["ada@example.com"]["Order number"] == shop.order_number

    response = admin_client.get(reverse(f"{DESK}:index"), {"export": "xlsx"})
    sheet = load_workbook(io.BytesIO(b"".join(response.streaming_content))).active
    header = [cell.value for cell in sheet[1]]
    numbers = [row[header.index("Order number")].value for row in sheet.iter_rows(min_row=2)]
    assert shop.order_number in numbers


def test_inspect_view_links_stripes_receipt(
    admin_client, client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, fake_stripe, django_capture_on_commit_callbacks)
    inspect = admin_client.get(reverse(f"{DESK}:inspect", args=[purchase.pk])).content.decode()
    assert f'href="{purchase.receipt_url}"' in inspect


# Purchases made before receipts were recorded -----------------------------------------------

BEFORE = ("wagtail_paid_delivery", "0011_honest_states")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_migration_numbers_existing_purchases_and_their_receipt_shows_the_price(client, home):
    product = ProductPageFactory(parent=home, title="Old guide", price_amount=990)
    executor = MigrationExecutor(connection)
    # Every app's latest: going back to BEFORE also unapplies the product app's later migrations
    # (they depend on the main app's), and they must come back too.
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([BEFORE])
    old = executor.loader.project_state([BEFORE]).apps.get_model(*BEFORE[:1], "Purchase")
    for n in range(3):
        old.objects.create(
            product_id=product.pk,
            product_title="Old guide",
            amount=990,
            currency="EUR",
            email=f"old{n}@example.com",
            status="paid",
            stripe_checkout_session_id=f"cs_test_old{n}",
        )

    MigrationExecutor(connection).migrate(latest)

    purchases = list(Purchase.objects.order_by("pk"))
    numbers = [p.order_number for p in purchases]
    assert len(set(numbers)) == 3 and all(NUMBER.fullmatch(n) for n in numbers)
    first = purchases[0]
    assert first.amount_total is None and first.receipt_url == ""
    receipt = receipt_text(download_page(client, first))
    assert f"Order number {first.order_number}" in receipt
    assert "Price €9.90" in receipt and "Total paid" not in receipt
    desk_search = Purchase.objects.filter(order_number__endswith=numbers[2][-11:])
    assert list(desk_search) == [purchases[2]]


def test_a_later_stripe_reread_fills_in_an_old_purchases_receipt(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    """A purchase paid before receipts were recorded gets its amounts when Stripe is next read
    for it (a refund's or a dispute's event, reconciliation); the amounts are never rewritten."""
    purchase = buy(
        client, product, fake_stripe, django_capture_on_commit_callbacks, amount_discount=100
    )
    Purchase.objects.filter(pk=purchase.pk).update(
        amount_total=None, amount_subtotal=None, amount_discount=0, receipt_url=""
    )
    fake_stripe.refund(purchase.stripe_checkout_session_id, amount=100)
    with django_capture_on_commit_callbacks(execute=True):
        charge = fake_stripe.charge(purchase.stripe_checkout_session_id)
        post_event(client, event_for(charge, "charge.refunded"))
    purchase.refresh_from_db()
    assert (purchase.amount_total, purchase.amount_discount, purchase.amount_refunded) == (
        1150,
        100,
        100,
    )
    assert purchase.receipt_url.startswith("https://pay.stripe.com/receipts/")
