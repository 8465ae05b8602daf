"""The delivery email: sent once per purchase on purchase_paid, retried when sending fails."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from django.core import mail
from django.core.mail.backends.locmem import EmailBackend
from django.db import connection
from django_q.models import Task

from tests.concurrency import run_at_once
from tests.factories import DeliveryCopyFactory, ProductPageFactory, PurchaseFactory
from wagtail_paid_delivery import delivery, tasks
from wagtail_paid_delivery.models import DownloadLink, Purchase
from wagtail_paid_delivery.signals import purchase_paid

pytestmark = pytest.mark.django_db


@pytest.fixture
def purchase(home):
    copy = DeliveryCopyFactory(
        email_subject="Here is {product}",
        email_body="Thanks for {product}, {email}. Good until {expires}; {downloads_left} each.",
    )
    product = ProductPageFactory(parent=home, title="Star <Atlas>", delivery_copy=copy)
    return PurchaseFactory(paid=True, product=product, email="ada@example.com")


def tell_paid(purchase, capture):
    with capture(execute=True):
        purchase_paid.send(sender=Purchase, purchase=purchase)


def test_purchase_paid_sends_one_email_with_a_download_link(
    purchase, django_capture_on_commit_callbacks
):
    tell_paid(purchase, django_capture_on_commit_callbacks)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ada@example.com"]
    assert message.subject == "Here is Star <Atlas>"
    link = DownloadLink.objects.get(purchase=purchase)
    assert link.reason == DownloadLink.Reason.WEBHOOK
    url = message.body.split("Download your files:\n")[1].split("\n")[0]
    assert url.startswith("http://testserver/shop/d/")
    assert "Thanks for Star <Atlas>, ada@example.com." in message.body
    assert "5 each" in message.body
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    assert f'href="{url}"' in html
    assert "Star &lt;Atlas&gt;" in html and "<Atlas>" not in html  # copy values are escaped
    assert "products/" not in message.body + html  # never a storage path
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is not None
    assert Task.objects.filter(func="wagtail_paid_delivery.tasks.send_delivery_email").count() == 1


def test_the_emailed_link_opens_the_download_page(
    client, purchase, django_capture_on_commit_callbacks
):
    tell_paid(purchase, django_capture_on_commit_callbacks)
    url = mail.outbox[0].body.split("Download your files:\n")[1].split("\n")[0]
    response = client.get(url.replace("http://testserver", ""))
    assert response.status_code == 200
    assert "Star &lt;Atlas&gt;" in response.content.decode()


def test_told_twice_sends_once(purchase, django_capture_on_commit_callbacks):
    tell_paid(purchase, django_capture_on_commit_callbacks)
    tell_paid(purchase, django_capture_on_commit_callbacks)
    assert tasks.send_delivery_email(purchase.pk) == "already_sent"
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1


def test_a_purchase_that_is_not_paid_gets_no_email(home):
    purchase = PurchaseFactory(status="disputed", product=ProductPageFactory(parent=home))
    assert tasks.send_delivery_email(purchase.pk).startswith("not_paid")
    assert tasks.send_delivery_email(10**9) == "missing"
    assert mail.outbox == [] and not DownloadLink.objects.exists()


class FlakyBackend(EmailBackend):
    failures = 0

    def send_messages(self, messages):
        if FlakyBackend.failures:
            FlakyBackend.failures -= 1
            raise ConnectionRefusedError("SMTP server is down")
        return super().send_messages(messages)


def test_a_failed_send_is_recorded_and_the_retry_sends(
    purchase, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "tests.test_delivery_email.FlakyBackend"
    FlakyBackend.failures = 1
    # The task raises (in a cluster django-q2 records a failed task; sync mode re-raises).
    with pytest.raises(ConnectionRefusedError):
        tell_paid(purchase, django_capture_on_commit_callbacks)
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is None
    assert not DownloadLink.objects.exists()  # rolled back with the failed send
    assert mail.outbox == []
    # django-q2's retry (or an operator's replay) runs the same task again:
    assert tasks.send_delivery_email(purchase.pk) == "sent"
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1


def test_sending_raises_to_the_caller(purchase, settings):
    settings.EMAIL_BACKEND = "tests.test_delivery_email.FlakyBackend"
    FlakyBackend.failures = 1
    with pytest.raises(ConnectionRefusedError):
        tasks.send_delivery_email(purchase.pk)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_runs_send_once(home):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite ignores select_for_update; the row lock is proven on PostgreSQL")
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    real_send = delivery.EmailMultiAlternatives.send

    def slow_send(self, *args, **kwargs):
        time.sleep(0.3)  # widen the window: the second run must wait on the row lock
        return real_send(self, *args, **kwargs)

    with mock.patch.object(delivery.EmailMultiAlternatives, "send", slow_send):
        results = run_at_once([lambda: delivery.deliver_purchase(purchase.pk)] * 3)
    assert sorted(results) == ["already_sent", "already_sent", "sent"]
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1
