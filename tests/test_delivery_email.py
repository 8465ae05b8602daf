"""The delivery email: sent once per purchase on purchase_paid, retried when sending fails
(the outbox's own tests: tests/test_outbox.py)."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone
from django_q.models import Task
from wagtail.models import Page, Site

from tests.concurrency import run_at_once
from tests.factories import DeliveryCopyFactory, ProductPageFactory, PurchaseFactory
from tests.testapp.models import HomePage
from wagtail_paid_delivery import links, tasks
from wagtail_paid_delivery.models import DownloadLink, OutboundEmail, Purchase
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
    assert OutboundEmail.objects.filter(purchase=purchase).count() == 1


def test_a_purchase_that_is_not_paid_gets_no_email(home):
    purchase = PurchaseFactory(status="disputed", product=ProductPageFactory(parent=home))
    assert tasks.send_delivery_email(purchase.pk).startswith("not_paid")
    assert tasks.send_delivery_email(10**9) == "missing"
    assert mail.outbox == [] and not DownloadLink.objects.exists()


def test_a_failed_send_is_recorded_and_the_sweep_sends_it_later(
    purchase, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    # The task records the failure instead of raising: retrying is the outbox's, with every
    # broker (with ack_failures django-q2 would drop a failed task; Redis never re-delivers).
    tell_paid(purchase, django_capture_on_commit_callbacks)
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is None
    email = OutboundEmail.objects.get(purchase=purchase)
    assert (email.status, email.attempts) == (OutboundEmail.Status.PENDING, 1)
    assert "SMTPServerDisconnected" in email.last_error
    assert not DownloadLink.objects.filter(revoked_at=None).exists()  # the attempt's link revoked
    assert mail.outbox == []
    # Running the task again before the next attempt is due sends nothing.
    assert tasks.send_delivery_email(purchase.pk) == "waiting"
    # The mail server is back; the next attempt is due; the sweep sends it.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    assert tasks.sweep_emails().startswith("queued 1")
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase, revoked_at=None).count() == 1
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is not None


def test_a_failed_send_is_reported_not_raised(purchase, settings):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    assert tasks.send_delivery_email(purchase.pk) == "failed (attempt 1 of 50)"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_runs_send_once(home, settings):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite ignores select_for_update; the claim is proven on PostgreSQL")
    # A slow mail server widens the window: the other runs find the email claimed.
    settings.EMAIL_BACKEND = "tests.mail_backends.SlowBackend"
    purchase = PurchaseFactory(paid=True, product=ProductPageFactory(parent=home))
    results = run_at_once([lambda: tasks.send_delivery_email(purchase.pk)] * 3)
    assert results.count("sent") == 1, results
    assert set(results) <= {"sent", "waiting", "already_sent"}, results
    assert len(mail.outbox) == 1
    assert DownloadLink.objects.filter(purchase=purchase).count() == 1
    assert OutboundEmail.objects.filter(purchase=purchase).count() == 1


def test_emailed_links_start_at_the_products_own_site_from_wagtails_cached_root_paths(
    home, django_assert_num_queries
):
    other_home = HomePage(title="Other shop", slug="other-shop")
    Page.get_first_root_node().add_child(instance=other_home)
    Site.objects.create(hostname="books.example.com", port=443, root_page=other_home)
    product = ProductPageFactory(parent=other_home, title="Atlas")
    purchase = Purchase.objects.select_related("product").get(
        pk=PurchaseFactory(product=product).pk
    )
    assert links.site_root_url(purchase) == "https://books.example.com"
    # Wagtail keeps the site root paths cached: an email's URL costs no Site query.
    with django_assert_num_queries(0):
        assert links.site_root_url(purchase) == "https://books.example.com"
    at_home = Purchase.objects.select_related("product").get(
        pk=PurchaseFactory(product=ProductPageFactory(parent=home)).pk
    )
    assert links.site_root_url(at_home) == "http://testserver"
