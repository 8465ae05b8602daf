"""The product editor's "Sales and downloads" panel (product_stats through real admin URLs), and
the warning when a file paid buyers own is removed."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from tests.factories import DownloadLinkFactory, ProductPageFactory, PurchaseFactory
from tests.test_product_admin import (
    _existing_files_formset,
    edit_url,
    form_errors,
    nested_form_data,
    product_data,
)
from tests.test_shop_desk import desk_user
from wagtail_paid_delivery.models import DownloadEvent, Purchase

pytestmark = pytest.mark.django_db
S = Purchase.Status


@pytest.fixture
def sold(home):
    product = ProductPageFactory(parent=home, title="Field guide", files=2, price_amount=1250)
    first, second = product.files.order_by("sort_order")
    ada = PurchaseFactory(paid=True, product=product, email="ada@example.com", amount=1250)
    euro = PurchaseFactory(
        paid=True, product=product, email="eu@example.com", amount=1100, currency="eur"
    )
    PurchaseFactory(paid=True, product=product, email="jo@example.com", amount=1250)
    Purchase.objects.filter(email="jo@example.com").update(status=S.REFUNDED, amount_refunded=1250)
    PurchaseFactory(product=product, email="sam@example.com")  # pending: not a sale
    link = DownloadLinkFactory(purchase=ada)
    for counted in (True, True, False):
        DownloadEvent.objects.create(
            link=link, file_id=first.pk, outcome="served" if counted else "limit", counted=counted
        )
    DownloadEvent.objects.create(
        link=DownloadLinkFactory(purchase=euro), file_id=second.pk, outcome="served", counted=True
    )
    return product, first, second


def test_product_editor_shows_sales_revenue_refunds_and_downloads(admin_client, sold):
    product, first, second = sold
    response = admin_client.get(edit_url(product))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Sales and downloads" in html
    panel = html[html.index('class="wpd-sales"') :]
    assert "<dt>Sales</dt><dd>3</dd>" in panel
    assert "<dt>Refunded (in full or in part)</dt><dd>1</dd>" in panel
    assert "<dt>Buyers with access now</dt><dd>2</dd>" in panel
    # USD: two sales of $12.50, one refunded in full; EUR: one of €11.00.
    assert "<td>USD</td><td>$25.00</td><td>$12.50</td><td><strong>$12.50</strong></td>" in panel
    assert "<td>EUR</td><td>€11.00</td>" in panel
    assert f"<tr><td>{first.title}</td><td>2</td><td>1</td></tr>" in panel
    assert f"<tr><td>{second.title}</td><td>1</td><td>0</td></tr>" in panel
    assert "Removing a file takes it off every download page" in panel


def test_editors_without_the_purchases_view_permission_see_no_sales(client, sold, home):
    from tests.factories import page_editor

    product, *_files = sold
    client.force_login(page_editor(home))
    response = client.get(edit_url(product))
    assert response.status_code == 200
    assert "wpd-sales" not in response.content.decode()


def test_a_purchases_viewer_who_edits_pages_sees_the_sales(client, sold, home):
    from tests.factories import page_editor

    product, *_files = sold
    editor = page_editor(home, username="owner")
    editor.groups.add(*desk_user("view_purchase", username="viewer").groups.all())
    client.force_login(editor)
    assert "wpd-sales" in client.get(edit_url(product)).content.decode()


def test_removing_a_file_paid_buyers_own_is_allowed_with_a_warning(admin_client, sold):
    product, first, second = sold
    files = _existing_files_formset(product)
    files["0"]["DELETE"] = "1"
    data = product_data(title="Field guide", slug=product.slug)
    data.update(nested_form_data({"files": files}))
    response = admin_client.post(edit_url(product), data)
    assert response.status_code == 302, form_errors(response)
    warnings = [str(m) for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
    assert len(warnings) == 1
    assert f"You removed “{first.title}”, a file paid buyers own." in warnings[0]
    assert "also for those who paid before" in warnings[0]
    assert list(product.files.all()) == [second]
    # The panel still counts its downloads, marked removed.
    html = admin_client.get(edit_url(product)).content.decode()
    assert f"<tr><td>#{first.pk} <em>(removed)</em></td><td>2</td><td>1</td></tr>" in html


def test_removing_a_file_of_an_unsold_product_says_nothing(admin_client, home):
    product = ProductPageFactory(parent=home, title="Unsold", files=2)
    files = _existing_files_formset(product)
    files["0"]["DELETE"] = "1"
    data = product_data(title="Unsold", slug=product.slug)
    data.update(nested_form_data({"files": files}))
    response = admin_client.post(edit_url(product), data)
    assert response.status_code == 302, form_errors(response)
    assert not [m for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
    assert product.files.count() == 1


def test_a_removed_file_leaves_a_past_buyers_download_page(admin_client, client, sold):
    """What the warning says: the page lists the product's files as they are now."""
    from django.urls import reverse

    from wagtail_paid_delivery import links

    product, first, second = sold
    ada = Purchase.objects.get(email="ada@example.com")
    issued = links.issue_link(ada, reason="admin")
    page = reverse("wagtail_paid_delivery:download", args=[issued.token])
    before = client.get(page).content.decode()
    assert first.title in before and second.title in before

    files = _existing_files_formset(product)
    files["0"]["DELETE"] = "1"
    data = product_data(title="Field guide", slug=product.slug)
    data.update(nested_form_data({"files": files}))
    assert admin_client.post(edit_url(product), data).status_code == 302

    after = client.get(page).content.decode()
    assert first.title not in after and second.title in after
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, first.pk])
    assert client.post(button).status_code == 404
