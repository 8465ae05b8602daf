"""An update notice announces the release it was published with: an editor replaces an upload
with release notes, ticks "email past buyers" and publishes in the Wagtail admin; each past buyer's
email names the new version with its notes, and its fresh link serves the bytes the product's
policy entitles them to (the new version under "latest", the one they bought under "bought")."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from django.core import mail
from django.urls import reverse
from wagtail.test.utils.form_data import inline_formset, nested_form_data

from tests.test_file_versions import V1, V2, buy, create_product, download, guide, replace_guide
from tests.test_product_admin import edit_url, form_errors, product_data
from wagtail_paid_delivery import links, updates
from wagtail_paid_delivery.models import DownloadLink, UpdateNotice
from wagtail_paid_delivery.product.models import ProductPage

# Real commits: the notice's batch and its emails run when the publish commits (on_commit).
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SUBJECT = "The guide, second edition"
MESSAGE = "A new edition of the guide is out."
NOTES = "Fixed the typos on pages 3 and 12."


def notify(**fields) -> dict:
    return {
        "notify_buyers": "on",
        "update_subject": SUBJECT,
        "update_message": MESSAGE,
        **fields,
    }


def update_email_to(address: str):
    [message] = [m for m in mail.outbox if m.subject == SUBJECT and m.to == [address]]
    return message


def fresh_link(client, message, purchase):
    """The update email's link: made for this email, and it opens the buyer's download page."""
    url = re.search(r"https?://\S+/d/([^/\s]+)/", message.body)
    assert url, message.body
    found = links.find_link(url.group(1))
    assert (found.purchase_id, found.reason) == (purchase.pk, DownloadLink.Reason.UPDATE)
    assert client.get(url.group(0)).status_code == 200
    return url.group(1)


@pytest.mark.parametrize(("policy", "served"), [("latest", V2), ("bought", V1)])
def test_the_update_email_names_the_new_version_and_its_link_serves_the_entitled_bytes(
    admin_client, client, home, policy, served
):
    page = create_product(admin_client, home, past_buyers_get=policy)
    past = buy(page, email="ada@example.com")
    mail.outbox.clear()

    response = replace_guide(admin_client, page, V2, NOTES, past_buyers_get=policy, **notify())
    assert response.status_code == 302, form_errors(response)

    message = update_email_to("ada@example.com")
    assert MESSAGE in message.body
    assert "The guide: version 2," in message.body and NOTES in message.body
    assert "Bird songs" not in message.body  # not changed in this release
    token = fresh_link(client, message, past.link.purchase)

    downloaded, body = download(
        client, SimpleNamespace(token=token), guide(ProductPage.objects.get(pk=page.pk))
    )
    assert (downloaded.status_code, body) == (200, served)


def test_a_new_upload_published_with_the_same_words_is_a_new_release(admin_client, home):
    page = create_product(admin_client, home)
    buy(page, email="ada@example.com")
    assert replace_guide(admin_client, page, V2, NOTES, **notify()).status_code == 302
    assert replace_guide(admin_client, page, V1 + b"third", "Third.", **notify()).status_code == 302

    first, second = UpdateNotice.objects.order_by("created_at")
    assert first.release_key != second.release_key
    assert len([m for m in mail.outbox if m.subject == SUBJECT]) == 2
    # Each notice announces only what it brought.
    assert [v.number for _title, v in updates.released_versions(first)] == [2]
    assert [v.number for _title, v in updates.released_versions(second)] == [3]
    assert "Third." in updates.release_notes(second) and NOTES not in updates.release_notes(second)


def test_a_notice_without_a_new_version_carries_the_editors_words_alone(admin_client, home):
    page = create_product(admin_client, home)
    buy(page, email="ada@example.com")
    page = ProductPage.objects.get(pk=page.pk)
    files = [
        {"id": str(f.pk), "title": f.title, "file": "", "release_notes": f.release_notes}
        for f in page.files.order_by("sort_order")
    ]
    data = product_data(**notify())
    data.update(nested_form_data({"files": inline_formset(files, initial=len(files))}))
    assert admin_client.post(edit_url(page), data).status_code == 302

    notice = UpdateNotice.objects.get()
    assert updates.released_versions(notice) == []
    assert updates.release_notes(notice) == MESSAGE
    body = update_email_to("ada@example.com").body
    assert MESSAGE in body and ": version " not in body


def test_the_preview_lists_the_versions_published_since_the_last_notice(admin_client, home):
    page = create_product(admin_client, home)
    # A new version published without telling anyone yet.
    assert replace_guide(admin_client, page, V2, NOTES).status_code == 302
    page = ProductPage.objects.get(pk=page.pk)
    files = [
        {"id": str(f.pk), "title": f.title, "file": "", "release_notes": f.release_notes}
        for f in page.files.order_by("sort_order")
    ]
    data = product_data(**notify())
    data.update(nested_form_data({"files": inline_formset(files, initial=len(files))}))
    data.pop("action-publish")
    url = reverse("wagtailadmin_pages:preview_on_edit", args=[page.pk])
    assert admin_client.post(url, data).json()["is_valid"] is True

    html = admin_client.get(url, {"mode": "update_email"}).content.decode()
    assert MESSAGE in html and "The guide: version 2," in html and NOTES in html
    assert not UpdateNotice.objects.exists()  # a preview records nothing
