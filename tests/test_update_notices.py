"""Telling past buyers about a release: the editor's choice on publish (now or scheduled), the
batches at the configured rate, one email per buyer per release, the unsubscribe link, the
desk's progress panel."""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from email.utils import parseaddr

import pytest
from django.core import mail
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from wagtail.models import Site
from wagtail.test.utils.form_data import inline_formset, nested_form_data, rich_text

from tests.factories import ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import buyer_data, links, outbox, screens, tasks, updates
from wagtail_paid_delivery.models import (
    DownloadLink,
    OutboundEmail,
    Purchase,
    UpdateNotice,
    UpdateOptOut,
    UpdateRecipient,
)

# Real commits: the batch task and each email run when the publish commits (on_commit).
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

SUBJECT = "Field guide, second edition"
MESSAGE = "Chapter 4 is rewritten.\nThe maps are new."


def edit_url(page) -> str:
    return reverse("wagtailadmin_pages:edit", args=(page.pk,))


def edit_data(page, *, notify=False, subject=SUBJECT, message=MESSAGE, **fields) -> dict:
    """The edit view's POST for ``page`` as it is, with the update notice's fields."""
    files = [{"id": str(f.pk), "title": f.title, "file": ""} for f in page.files.all()]
    data = {
        "title": page.title,
        "slug": page.slug,
        "intro": page.intro,
        "body": rich_text("<p>Two hundred pages.</p>"),
        "price_amount": "12.50",
        "currency": "USD",
        "stripe_price_id": "",
        "delivery_copy": "",
        "link_lifetime_hours": "",
        "download_limit": "",
        "license_activation_limit": "",
        "update_subject": subject,
        "update_message": message,
        "files": inline_formset(files, initial=len(files)),
        "comments": inline_formset([]),
        "bundle_items": inline_formset([]),
        **fields,
    }
    if notify:
        data["notify_buyers"] = "on"
    data = nested_form_data(data)
    data["action-publish"] = "Publish"
    return data


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide")


@pytest.fixture
def buyers(product):
    """Two paid buyers, a grant, and buyers who must not be told."""
    return {
        "ada": PurchaseFactory(product=product, paid=True, email="ada@example.com"),
        "bob": PurchaseFactory(product=product, paid=True, email="bob@example.com"),
        "gift": PurchaseFactory(
            product=product, paid=True, email="gift@example.com", source=Purchase.Source.GRANT
        ),
        "refunded": PurchaseFactory(
            product=product, paid=True, email="refunded@example.com", status="refunded"
        ),
        "revoked": PurchaseFactory(
            product=product, paid=True, email="revoked@example.com", status="revoked"
        ),
        "disputed": PurchaseFactory(
            product=product, paid=True, email="disputed@example.com", status="disputed"
        ),
        "pending": PurchaseFactory(product=product, email="pending@example.com"),
        # The same buyer twice, the address in another case: one email.
        "ada_again": PurchaseFactory(product=product, paid=True, email="ADA@Example.com"),
    }


def update_emails() -> list:
    return [m for m in mail.outbox if m.subject == SUBJECT]


def recipients() -> list[str]:
    return sorted(parseaddr(m.to[0])[1].lower() for m in update_emails())


def publish_with_notice(client, page, **kwargs):
    response = client.post(edit_url(page), edit_data(page, notify=True, **kwargs))
    assert response.status_code == 302, response.context["form"].errors
    return response


# Publishing with the choice ------------------------------------------------------------------


def test_publishing_with_notify_emails_each_buyer_once_with_a_fresh_link(
    admin_client, client, product, buyers
):
    publish_with_notice(admin_client, product)

    assert recipients() == ["ada@example.com", "bob@example.com", "gift@example.com"]
    notice = UpdateNotice.objects.get()
    assert (notice.subject, notice.message) == (SUBJECT, MESSAGE)
    assert notice.queued_at is not None
    message = next(m for m in update_emails() if m.to == ["bob@example.com"])
    assert "Chapter 4 is rewritten." in message.body and "The maps are new." in message.body
    html = message.alternatives[0][0]
    assert "Chapter 4 is rewritten.<br>The maps are new." in html
    # A fresh link, made for this email, that opens the buyer's download page.
    link = DownloadLink.objects.get(purchase=buyers["bob"], reason=DownloadLink.Reason.UPDATE)
    url = re.search(r"https?://\S+/d/[^/\s]+/", message.body).group(0)
    assert client.get(url).status_code == 200
    assert link.purchase == buyers["bob"]
    assert links.find_link(url.rstrip("/").rsplit("/", 1)[1]).pk == link.pk  # the email's own
    # The address's newest purchase is the one its email is about.
    ada = UpdateRecipient.objects.get(purchase__email__iexact="ada@example.com")
    assert ada.purchase == buyers["ada_again"]
    assert OutboundEmail.objects.filter(kind="update", status="sent").count() == 3


def test_update_email_carries_one_click_unsubscribe_headers(admin_client, product, buyers):
    Site.objects.update(port=443, hostname="shop.example")
    publish_with_notice(admin_client, product)

    message = next(m for m in update_emails() if m.to[0].lower() == "ada@example.com")
    header = message.extra_headers["List-Unsubscribe"]
    assert re.fullmatch(r"<https://shop\.example/shop/updates/unsubscribe/[^/>]+/>", header)
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert header[1:-1] in message.body
    # The address is not in the URL.
    assert "ada" not in header.lower()
    # The outbox's Message-ID is kept on it.
    assert (
        message.extra_headers["Message-ID"]
        == OutboundEmail.objects.get(to="ADA@Example.com").message_id
    )


def test_publishing_without_notify_tells_nobody(admin_client, product, buyers):
    response = admin_client.post(edit_url(product), edit_data(product))
    assert response.status_code == 302
    assert update_emails() == [] and not UpdateNotice.objects.exists()


def test_notify_without_subject_or_message_is_refused_with_the_forms_message(
    admin_client, product, buyers
):
    response = admin_client.post(edit_url(product), edit_data(product, notify=True, subject=" "))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert errors["update_subject"] == ["Write the update email before asking to send it."]
    assert not UpdateNotice.objects.exists() and update_emails() == []


def test_the_choice_starts_unticked_so_the_next_publish_tells_nobody(admin_client, product, buyers):
    publish_with_notice(admin_client, product)
    mail.outbox.clear()
    html = admin_client.get(edit_url(product)).content.decode()
    checkbox = re.search(r'<input[^>]*name="notify_buyers"[^>]*>', html).group(0)
    assert "checked" not in checkbox
    # The words stay for next time.
    assert SUBJECT in html

    product.refresh_from_db()
    response = admin_client.post(
        edit_url(product), edit_data(product, subject="Typo fixed", message="Nothing new.")
    )
    assert response.status_code == 302
    assert mail.outbox == [] and UpdateNotice.objects.count() == 1


def test_publishing_the_same_release_again_sends_nothing(admin_client, product, buyers):
    publish_with_notice(admin_client, product)
    notice = UpdateNotice.objects.get()
    sent = len(mail.outbox)

    # The same revision published again, and the same words published again with notify.
    notice.revision.publish()
    product.refresh_from_db()
    publish_with_notice(admin_client, product)
    # A bulk publish of the latest revision (it still says "notify") is the same release too.
    product.refresh_from_db()
    product.get_latest_revision_as_object().save_revision().publish()

    assert len(mail.outbox) == sent
    assert UpdateNotice.objects.count() == 1
    assert UpdateRecipient.objects.count() == 3


def test_a_new_release_is_told_again(admin_client, product, buyers):
    publish_with_notice(admin_client, product)
    product.refresh_from_db()
    publish_with_notice(admin_client, product, subject="Third edition", message="Index added.")
    assert UpdateNotice.objects.count() == 2
    assert sorted(m.to[0].lower() for m in mail.outbox if m.subject == "Third edition") == [
        "ada@example.com",
        "bob@example.com",
        "gift@example.com",
    ]


def test_scheduled_publish_sends_at_go_live_through_publish_scheduled(
    admin_client, product, buyers
):
    go_live = timezone.localtime(timezone.now() + timedelta(hours=2))
    response = admin_client.post(
        edit_url(product),
        edit_data(product, notify=True, go_live_at=go_live.strftime("%Y-%m-%d %H:%M")),
    )
    assert response.status_code == 302, response.context["form"].errors
    call_command("publish_scheduled")
    assert update_emails() == [] and not UpdateNotice.objects.exists()

    product.refresh_from_db()
    revision = product.revisions.exclude(approved_go_live_at=None).get()
    assert revision.content["notify_buyers"] is True
    # Two hours later (the revision's go-live time moved back instead of the clock forward).
    past = timezone.now() - timedelta(minutes=1)
    revision.content["go_live_at"] = past.isoformat()
    revision.approved_go_live_at = past
    revision.save(update_fields=["content", "approved_go_live_at"])
    tasks.publish_scheduled()  # the django-q2 schedule's task: Wagtail's command

    assert recipients() == ["ada@example.com", "bob@example.com", "gift@example.com"]
    assert UpdateNotice.objects.get().revision == revision


@override_settings(WAGTAIL_PAID_DELIVERY={"SCHEDULE_PUBLISHING": True, "INSTALLATION_ID": "t"})
def test_schedule_publishing_setting_adds_the_publish_scheduled_schedule():
    from django_q.models import Schedule

    from wagtail_paid_delivery.schedules import ensure_schedules

    ensure_schedules()
    schedule = Schedule.objects.get(name="wagtail_paid_delivery.publish_scheduled")
    assert (schedule.func, schedule.minutes) == ("wagtail_paid_delivery.tasks.publish_scheduled", 1)
    with override_settings(WAGTAIL_PAID_DELIVERY={"INSTALLATION_ID": "t"}):
        ensure_schedules()
        assert not Schedule.objects.filter(name__endswith="publish_scheduled").exists()
        assert Schedule.objects.filter(name="wagtail_paid_delivery.update_notices").exists()


# Batches, rate, resuming ---------------------------------------------------------------------


def many_buyers(product, count):
    return [
        PurchaseFactory(product=product, paid=True, email=f"reader{i}@example.com")
        for i in range(count)
    ]


def make_due(notice):
    UpdateNotice.objects.filter(pk=notice.pk).update(
        next_batch_at=timezone.now() - timedelta(seconds=1)
    )


@override_settings(
    WAGTAIL_PAID_DELIVERY={"UPDATE_EMAILS_PER_MINUTE": 2, "INSTALLATION_ID": "tests"}
)
def test_emails_are_queued_in_batches_at_the_configured_rate(admin_client, product):
    many_buyers(product, 5)
    publish_with_notice(admin_client, product)
    notice = UpdateNotice.objects.get()
    assert len(update_emails()) == 2
    assert notice.next_batch_at > timezone.now() + timedelta(seconds=50)

    # The schedule runs every minute; before the minute is up it queues nothing.
    assert "nothing due" in tasks.update_notices()
    assert len(update_emails()) == 2

    make_due(notice)
    tasks.update_notices()
    assert len(update_emails()) == 4
    make_due(notice)
    tasks.update_notices()
    notice.refresh_from_db()
    assert len(update_emails()) == 5 and notice.queued_at is not None and notice.batches == 3
    make_due(notice)
    assert tasks.update_notices() == "nothing due"
    assert len(set(recipients())) == 5 == len(recipients())


@override_settings(
    WAGTAIL_PAID_DELIVERY={"UPDATE_EMAILS_PER_MINUTE": 2, "INSTALLATION_ID": "tests"}
)
def test_a_buyer_whose_address_is_corrected_mid_run_is_not_picked_again(admin_client, product):
    many_buyers(product, 5)
    publish_with_notice(admin_client, product)
    notice = UpdateNotice.objects.get()
    told = UpdateRecipient.objects.filter(notice=notice).first().purchase
    # The desk corrects a told buyer's address: a new digest, the same purchase.
    Purchase.objects.filter(pk=told.pk).update(email="corrected@example.com")

    for _ in range(3):
        make_due(notice)
        tasks.update_notices()
    notice.refresh_from_db()
    assert notice.queued_at is not None and notice.batches == 3
    assert len(recipients()) == 5 == len(set(recipients()))
    assert "corrected@example.com" not in recipients()


@override_settings(
    WAGTAIL_PAID_DELIVERY={"UPDATE_EMAILS_PER_MINUTE": 2, "INSTALLATION_ID": "tests"}
)
def test_a_run_interrupted_mid_batch_resumes_and_emails_nobody_twice(
    admin_client, product, monkeypatch
):
    many_buyers(product, 5)
    publish_with_notice(admin_client, product)
    notice = UpdateNotice.objects.get()
    assert len(update_emails()) == 2

    # The process dies after the second batch committed its promises but before their tasks
    # reached the broker.
    monkeypatch.setattr(outbox, "enqueue", lambda *args, **kwargs: None)
    make_due(notice)
    assert tasks.send_update_batch(notice.pk) == "queued 2"
    assert len(update_emails()) == 2
    # A batch task delivered twice by the broker queues nothing new while not due.
    assert tasks.send_update_batch(notice.pk) == "waiting"
    monkeypatch.undo()

    # After the restart: the email sweep sends the promises whose task was lost, the
    # schedule queues the rest.
    OutboundEmail.objects.update(created_at=timezone.now() - outbox.STUCK_AFTER)
    tasks.sweep_emails()
    assert len(update_emails()) == 4
    make_due(notice)
    tasks.update_notices()
    tasks.sweep_emails()
    assert len(recipients()) == 5 == len(set(recipients()))
    assert UpdateRecipient.objects.filter(notice=notice).count() == 5


def test_a_lost_first_batch_is_started_by_the_schedule(product, buyers, monkeypatch):
    monkeypatch.setattr(updates, "enqueue_batch", lambda pk: None)
    product.notify_buyers, product.update_subject, product.update_message = True, SUBJECT, "x"
    product.save_revision().publish()
    notice = UpdateNotice.objects.get()
    assert notice.batches == 0 and update_emails() == []
    assert tasks.update_notices() == "nothing due"  # not stuck yet
    UpdateNotice.objects.update(created_at=timezone.now() - timedelta(minutes=3))
    tasks.update_notices()
    assert recipients() == ["ada@example.com", "bob@example.com", "gift@example.com"]


def test_a_buyer_refunded_after_queuing_is_not_sent_and_counted_as_not_sent(
    admin_client, product, buyers, monkeypatch
):
    monkeypatch.setattr(outbox, "enqueue", lambda *args, **kwargs: None)
    publish_with_notice(admin_client, product)
    Purchase.objects.filter(pk=buyers["bob"].pk).update(status=Purchase.Status.REFUNDED)
    for email in OutboundEmail.objects.filter(kind="update"):
        outbox.attempt(email.pk)
    assert recipients() == ["ada@example.com", "gift@example.com"]
    progress = updates.progress(UpdateNotice.objects.get())
    assert (progress.recipients, progress.sent, progress.not_sent) == (3, 2, 1)
    assert progress.finished


# Unsubscribing -------------------------------------------------------------------------------


def unsubscribe_path(address: str) -> str:
    return reverse("wagtail_paid_delivery:unsubscribe", args=[updates.unsubscribe_token(address)])


def test_unsubscribe_get_shows_a_button_and_changes_nothing(client):
    response = client.get(unsubscribe_path("ada@example.com"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Unsubscribe from update emails" in html and 'method="post"' in html
    assert (
        response["Cache-Control"].startswith("no-store") or "no-store" in response["Cache-Control"]
    )
    assert "script-src" in response["Content-Security-Policy"]
    assert not UpdateOptOut.objects.exists()


def test_one_click_post_unsubscribes_without_a_csrf_token_and_stops_update_emails(
    admin_client, product, buyers
):
    mail_client = Client(enforce_csrf_checks=True)  # a mail provider: no cookie, no token
    response = mail_client.post(
        unsubscribe_path("Ada@EXAMPLE.com"), {"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    assert "You are unsubscribed" in response.content.decode()
    assert UpdateOptOut.objects.count() == 1
    # Again: still unsubscribed, one row.
    assert mail_client.post(unsubscribe_path("ada@example.com")).status_code == 200
    assert UpdateOptOut.objects.count() == 1

    publish_with_notice(admin_client, product)
    assert recipients() == ["bob@example.com", "gift@example.com"]
    assert updates.is_unsubscribed("ADA@example.COM")


def test_unsubscribing_after_the_email_was_queued_stops_it(
    admin_client, product, buyers, monkeypatch
):
    monkeypatch.setattr(outbox, "enqueue", lambda *args, **kwargs: None)
    publish_with_notice(admin_client, product)
    Client().post(unsubscribe_path("bob@example.com"))
    for email in OutboundEmail.objects.filter(kind="update"):
        outbox.attempt(email.pk)
    assert recipients() == ["ada@example.com", "gift@example.com"]
    bob = OutboundEmail.objects.get(to="bob@example.com")
    assert bob.status == "cancelled" and "unsubscribed" in bob.last_error


@pytest.mark.parametrize(
    "token",
    [
        "0" * 64 + ":1abcde:forgedsignatureforgedsignatureforgedsig",
        "not-a-token",
        "{real}x",  # a genuine token with a character added
        "{real_other}",  # genuine signature over another salt's value
    ],
)
def test_forged_unsubscribe_tokens_are_refused_and_change_nothing(client, token):
    from django.core import signing

    real = updates.unsubscribe_token("ada@example.com")
    other = signing.TimestampSigner(salt="another").sign(buyer_data.address_digest("a@b.c"))
    token = token.replace("{real}", real).replace("{real_other}", other)
    path = reverse("wagtail_paid_delivery:unsubscribe", args=[token])
    for method in (client.get, client.post):
        response = method(path)
        assert response.status_code == 400
        assert "This unsubscribe link does not work" in response.content.decode()
    assert not UpdateOptOut.objects.exists()


def test_an_expired_unsubscribe_token_is_refused(client, monkeypatch):
    path = unsubscribe_path("ada@example.com")
    later = time.time() + timedelta(days=366).total_seconds()
    monkeypatch.setattr("django.core.signing.time.time", lambda: later)
    response = client.post(path)
    assert response.status_code == 410
    assert "This unsubscribe link has expired" in response.content.decode()
    assert not UpdateOptOut.objects.exists()


def test_buyer_data_export_and_erase_include_the_opt_out(admin_client, product, buyers):
    publish_with_notice(admin_client, product)
    Client().post(unsubscribe_path("ada@example.com"))
    exported = buyer_data.export("ADA@example.com")
    assert exported["update_emails"]["unsubscribed"] is True
    assert buyer_data.export("bob@example.com")["update_emails"]["unsubscribed"] is False

    buyer_data.erase("ada@example.com", user=None)
    assert not UpdateOptOut.objects.exists()
    digest = buyer_data.address_digest("ada@example.com")
    assert not UpdateRecipient.objects.filter(address_digest=digest).exists()
    assert UpdateRecipient.objects.filter(address_digest__startswith="erased:").count() == 1


# The editor's preview and the desk's panel --------------------------------------------------


def test_editor_previews_the_update_email_in_unsaved_words(admin_client, product, buyers):
    url = reverse("wagtailadmin_pages:preview_on_edit", args=[product.pk])
    data = edit_data(product, subject="Unsaved subject", message="Unsaved <b>notes</b>\nline two")
    data.pop("action-publish")
    response = admin_client.post(url, data)
    assert response.json() == {"is_valid": True, "is_available": True}

    response = admin_client.get(url, {"mode": "update_email"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Unsaved subject" in html
    assert "Unsaved &lt;b&gt;notes&lt;/b&gt;<br>line two" in html  # escaped, line breaks kept
    assert "Download the latest files" in html and "Unsubscribe from update emails" in html
    # Sample links that open nothing: no link or opt-out was made.
    assert f"/d/{screens.SAMPLE_TOKEN}/" in html
    assert not DownloadLink.objects.exists()
    # Nothing saved, nobody emailed.
    product.refresh_from_db()
    assert product.update_subject == "" and mail.outbox == []
    assert ("update_email", "Update email") in [
        (m, str(label)) for m, label in product.preview_modes
    ]


def test_product_panel_shows_progress_and_failures(admin_client, product, buyers, monkeypatch):
    monkeypatch.setattr(outbox, "enqueue", lambda *args, **kwargs: None)
    publish_with_notice(admin_client, product)
    sent, failed = OutboundEmail.objects.filter(kind="update").order_by("pk")[:2]
    outbox.attempt(sent.pk)
    OutboundEmail.objects.filter(pk=failed.pk).update(
        status="failed", last_error="SMTPServerDisconnected: Connection unexpectedly closed"
    )

    html = admin_client.get(edit_url(product)).content.decode()
    assert "Update notices sent" in html
    row = re.search(r'<tr data-notice="\d+">(.*?)</tr>', html, re.S).group(1)
    cells = [
        re.sub(r"<[^>]+>|\s+", " ", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)
    ]
    assert cells[1] == SUBJECT
    assert cells[2:5] == ["3", "1", "1"]  # buyers, sent, waiting
    assert cells[5].startswith("1") and "See failed emails" in cells[5]
    assert "All queued; sending" in cells[7]
    assert "SMTPServerDisconnected" in html


def test_product_panel_is_hidden_from_editors_who_may_not_view_purchases(client, product):
    from tests.factories import page_editor

    client.force_login(page_editor(product.get_parent(), username="writer"))
    html = client.get(edit_url(product)).content.decode()
    assert "Update notice" in html  # the choice is theirs
    assert "Update notices sent" not in html


# PostgreSQL: batches at once ----------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="row locks are proven on PostgreSQL; SQLite ignores select_for_update and "
    "serialises writers with 'database is locked' errors instead",
)
@override_settings(
    WAGTAIL_PAID_DELIVERY={"UPDATE_EMAILS_PER_MINUTE": 2, "INSTALLATION_ID": "tests"}
)
def test_batches_run_at_once_queue_one_batch_and_email_nobody_twice(product, monkeypatch):
    from tests.concurrency import run_at_once

    many_buyers(product, 5)
    monkeypatch.setattr(updates, "enqueue_batch", lambda pk: None)
    product.notify_buyers, product.update_subject, product.update_message = True, SUBJECT, "x"
    product.save_revision().publish()
    notice = UpdateNotice.objects.get()

    results = run_at_once([lambda: tasks.send_update_batch(notice.pk)] * 3 + [tasks.update_notices])
    assert UpdateRecipient.objects.count() == 2, results
    assert len(update_emails()) == 2 == len(set(recipients()))
    notice.refresh_from_db()
    assert notice.batches == 1
