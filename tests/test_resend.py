"""resend/: fresh links by email, and nothing learned by a stranger, through the real URLs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.factories import DeliveryCopyFactory, ProductPageFactory, PurchaseFactory
from tests.mail_backends import DownBackend
from tests.screenshots import SCREENSHOTS
from wagtail_paid_delivery import links
from wagtail_paid_delivery.models import DownloadLink, OutboundEmail, Purchase
from wagtail_paid_delivery.tasks import sweep_emails
from wagtail_paid_delivery.views import resend as resend_view

pytestmark = pytest.mark.django_db

URL = "/shop/resend/"
PAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
LINK_RE = re.compile(r"http://testserver(/shop/d/[A-Za-z0-9_-]{43}/)")


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def enqueued(monkeypatch):
    """Record the resend tasks the view enqueues, instead of running them."""
    calls = []
    monkeypatch.setattr(resend_view, "enqueue_resend", lambda *args: calls.append(args))
    return calls


@pytest.fixture
def bought(home):
    product = ProductPageFactory(parent=home, title="Field guide", files=2)
    other = ProductPageFactory(parent=home, title="Star atlas")
    purchase = PurchaseFactory(paid=True, product=product, email="Buyer@Example.com")
    PurchaseFactory(paid=True, product=other, email="buyer@example.com")
    PurchaseFactory(product=other, email="buyer@example.com")  # pending: never resent
    return product, other, purchase


def test_resend_page_asks_for_an_address_with_private_headers(client, home):
    response = client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="email"' in html and "csrfmiddlewaretoken" in html
    assert "Lost your download link?" in html  # DeliveryCopy.resend_intro
    # Nothing from other origins: the app's own stylesheet and time script only.
    assert re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html) == [
        "/static/wagtail_paid_delivery/paid-delivery.css",
        "/static/wagtail_paid_delivery/local-time.js",
    ]
    for name, value in PAGE_HEADERS.items():
        assert response[name] == value


def test_lost_email_gets_fresh_working_links_for_every_paid_purchase(client, bought):
    product, other, purchase = bought
    response = client.post(URL, {"email": "BUYER@example.com"})
    assert response.status_code == 200
    assert "we are sending it fresh links" in response.content.decode()  # resend_confirmation
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    # The address on record (the newest purchase's spelling), not the one typed.
    assert message.to == ["buyer@example.com"]
    assert "Field guide" in message.body and "Star atlas" in message.body
    paths = LINK_RE.findall(message.body)
    assert len(paths) == 2
    links = DownloadLink.objects.filter(reason=DownloadLink.Reason.RESEND)
    assert links.count() == 2
    assert {link.purchase.status for link in links} == {Purchase.Status.PAID}
    html = message.alternatives[0][0]
    assert all(path in html for path in paths)
    # The links work: one download page lists the guide's files.
    pages = [client.get(path) for path in paths]
    assert [p.status_code for p in pages] == [200, 200]
    guide = next(p.content.decode() for p in pages if "Field guide" in p.content.decode())
    for file in product.product_files:
        assert file.title in guide


def test_resend_for_one_product_sends_only_its_link(client, bought):
    product, other, _ = bought
    response = client.post(URL, {"email": "buyer@example.com", "product": other.pk})
    assert response.status_code == 200
    assert len(mail.outbox) == 1
    assert "Star atlas" in mail.outbox[0].body and "Field guide" not in mail.outbox[0].body
    assert mail.outbox[0].subject == "Fresh download links for Star atlas"
    assert len(LINK_RE.findall(mail.outbox[0].body)) == 1


def test_a_stranger_learns_nothing_known_and_unknown_addresses_look_the_same(
    client, bought, enqueued
):
    known = client.post(URL, {"email": "buyer@example.com"})
    unknown = client.post(URL, {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert known.content == unknown.content
    assert sorted(known.headers.items()) == sorted(unknown.headers.items())
    # The view never looks the address up: it enqueues the task for both.
    assert enqueued == [("buyer@example.com", None), ("nobody@example.com", None)]


def test_unknown_address_gets_no_email(client, bought):
    response = client.post(URL, {"email": "nobody@example.com"})
    assert response.status_code == 200
    assert mail.outbox == []
    assert not DownloadLink.objects.filter(reason=DownloadLink.Reason.RESEND).exists()


def test_unpaid_or_refunded_purchases_are_not_resent(client, home):
    PurchaseFactory(product=ProductPageFactory(parent=home), email="p@example.com")
    refunded = PurchaseFactory(paid=True, email="r@example.com")
    Purchase.objects.filter(pk=refunded.pk).update(status=Purchase.Status.REFUNDED)
    client.post(URL, {"email": "p@example.com"})
    client.post(URL, {"email": "r@example.com"})
    assert mail.outbox == []


def test_malformed_address_is_told_whoever_types_it(client, home, enqueued):
    response = client.post(URL, {"email": "not an address"})
    assert response.status_code == 200
    assert "Enter a valid email address." in response.content.decode()
    assert enqueued == []


def test_resend_is_csrf_protected(home):
    client = Client(enforce_csrf_checks=True)
    assert client.post(URL, {"email": "buyer@example.com"}).status_code == 403
    page = client.get(URL)
    token = page.cookies["csrftoken"].value
    response = client.post(URL, {"email": "buyer@example.com", "csrfmiddlewaretoken": token})
    assert response.status_code == 200


@override_settings(WAGTAIL_PAID_DELIVERY={"RESEND_RATE_LIMIT": (3, 600)})
def test_client_limit_is_429_for_everyone_alike(client, bought, enqueued):
    for n in range(3):
        assert client.post(URL, {"email": f"a{n}@example.com"}).status_code == 200
    known = client.post(URL, {"email": "buyer@example.com"})
    unknown = client.post(URL, {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 429
    assert known.content == unknown.content
    assert "try again later" in known.content.decode()
    # When this client's window turns (django-ratelimit's windows are offset per client).
    assert 1 <= int(known["Retry-After"]) <= 600
    assert len(enqueued) == 3
    # Another client is not affected.
    other = client.post(URL, {"email": "buyer@example.com"}, REMOTE_ADDR="192.0.2.77")
    assert other.status_code == 200


@override_settings(WAGTAIL_PAID_DELIVERY={"RESEND_EMAIL_RATE_LIMIT": (2, 600)})
def test_address_limit_is_silent(client, bought):
    answers = [
        client.post(URL, {"email": "buyer@example.com"}, REMOTE_ADDR=f"192.0.2.{n}")
        for n in range(4)
    ]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert len(mail.outbox) == 2  # the third and fourth are dropped, and nothing says so


def test_expired_used_up_and_revoked_pages_offer_the_form_without_the_token(client, home):
    copy = DeliveryCopyFactory()
    product = ProductPageFactory(parent=home, delivery_copy=copy)
    purchase = PurchaseFactory(paid=True, product=product, email="secret-buyer@example.com")
    expired = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=expired.link.pk).update(
        expires_at=timezone.now() - timedelta(hours=1)
    )
    revoked = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    links.revoke_link(revoked.link)
    used = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    used.link.download_limit = 1
    used.link.save()
    from wagtail_paid_delivery.models import FileDownloadCount

    for f in product.product_files:
        FileDownloadCount.objects.create(link=used.link, file_id=f.pk, count=1)

    for issued, reason in ((expired, "expired"), (revoked, "revoked"), (used, "used_up")):
        response = client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
        assert response.status_code == 410
        html = response.content.decode()
        assert f'data-reason="{reason}"' in html
        assert f'action="{URL}"' in html and 'name="email"' in html
        assert "csrfmiddlewaretoken" in html
        assert "secret-buyer" not in html  # nothing prefilled from the token
        assert 'name="product"' not in html


def test_refused_page_form_posts_to_resend_and_a_fresh_link_arrives(client, home):
    product = ProductPageFactory(parent=home, title="Old map")
    purchase = PurchaseFactory(paid=True, product=product, email="map@example.com")
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=issued.link.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    client.get(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    response = client.post(URL, {"email": "map@example.com"})
    assert response.status_code == 200
    (path,) = LINK_RE.findall(mail.outbox[0].body)
    assert client.get(path).status_code == 200


def test_resend_task_is_idempotent_enough_and_reports(bought):
    from wagtail_paid_delivery.tasks import resend_links

    assert resend_links("nobody@example.com") == "nothing"
    assert resend_links("buyer@example.com") == "sent 2"
    assert resend_links("") == "no_email"


def test_a_resend_whose_send_fails_is_retried_and_arrives_once(client, bought, settings):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    DownBackend.handed = []
    response = client.post(URL, {"email": "buyer@example.com"})
    assert response.status_code == 200  # the same answer: the failure is the outbox's business
    assert "we are sending it fresh links" in response.content.decode()
    email = OutboundEmail.objects.get()
    assert (email.kind, email.status, email.attempts) == ("resend", "pending", 1)
    assert email.to == "buyer@example.com" and email.purchases.count() == 2
    assert email.idempotency_key.startswith("resend:")
    assert not DownloadLink.objects.filter(reason="resend", revoked_at=None).exists()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    assert sweep_emails().startswith("queued 1")
    assert sweep_emails().startswith("queued 0")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].message()["Message-ID"] == email.message_id
    for path in LINK_RE.findall(mail.outbox[0].body):
        assert client.get(path).status_code == 200
    # The failed attempt's links were revoked.
    (failed,) = DownBackend.handed
    assert failed.message()["Message-ID"] == email.message_id
    for path in LINK_RE.findall(failed.body):
        assert client.get(path).status_code == 410


def test_with_the_mail_server_down_known_and_unknown_addresses_look_the_same(
    client, bought, settings
):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    known = client.post(URL, {"email": "buyer@example.com"})
    unknown = client.post(URL, {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert known.content == unknown.content
    assert list(OutboundEmail.objects.values_list("to", flat=True)) == ["buyer@example.com"]


def test_each_request_is_its_own_email_but_a_request_run_twice_is_one(client, bought):
    client.post(URL, {"email": "buyer@example.com"})
    client.post(URL, {"email": "buyer@example.com"})
    keys = set(OutboundEmail.objects.values_list("idempotency_key", flat=True))
    assert len(keys) == 2 and len(mail.outbox) == 2
    # The broker runs one request's task twice: one email.
    from wagtail_paid_delivery.tasks import resend_links

    assert resend_links("buyer@example.com", None, "f00d") == "sent 2"
    assert resend_links("buyer@example.com", None, "f00d") == "already_sent"
    assert len(mail.outbox) == 3


# In a real browser (also takes docs/screenshots/resend.png) ---------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_resend_form_sends_a_working_link(bought, live_server, headless_chromium):

    from tests.test_download_browser import in_thread

    screenshots = SCREENSHOTS
    context = headless_chromium.new_context(viewport={"width": 900, "height": 620})
    page = context.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    assert page.goto(live_server.url + URL).status == 200
    page.get_by_label("Email address").fill("buyer@example.com")
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "resend.png"), full_page=True)
    page.get_by_role("button", name="Send me fresh links").click()
    page.wait_for_load_state()
    assert page.get_by_text("we are sending it fresh links").is_visible()
    assert all(r.startswith(live_server.url) for r in requests), requests
    assert len(mail.outbox) == 1
    path = LINK_RE.findall(mail.outbox[0].body)[0]
    assert page.goto(live_server.url + path).status == 200
    assert in_thread(lambda: DownloadLink.objects.filter(reason="resend").count()) == 2
    context.close()
