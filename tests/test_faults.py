"""Faults, at process level: real servers and task clusters are killed, cut off and restarted.

Each test starts real processes (tests/processes.py) on 127.0.0.1 against this test's
PostgreSQL database: gunicorn serving the shop and the sandbox's Stripe emulator, a django-q2
cluster (with the ORM broker and with the Redis broker), management commands. This process
only sets the scene (products, checkouts through the emulator, payments made at "Stripe"), acts
as Stripe and the buyer over HTTP, breaks things, and reads the outcome from the database and
the mail directory every process writes to. Thresholds that are minutes in production (leases,
"stuck after", the reconcile grace, retry delays) are seconds here (``tests.settings_faults``,
``processes.shorten_thresholds``), so each test takes well under a minute. They run once, on
PostgreSQL. docs/testing.md says what each one proves.
"""

from __future__ import annotations

import email
import hashlib
import http.client
import http.cookiejar
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path
from uuid import uuid4

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.urls import reverse

from sandbox.stripe_emulator import actions, webhooks
from sandbox.stripe_emulator.models import EmulatorSwitches
from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
from tests.processes import (
    REDIS_URL,
    Processes,
    database_url,
    delete_redis_queue,
    free_port,
    postgres_only,
    require_redis,
    started,
    wait_for,
)
from tests.stripe_fake import sign_payload
from wagtail_paid_delivery import inbox, links
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadHandoff,
    DownloadLink,
    FileDownloadCount,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

pytestmark = [
    pytest.mark.slow,
    postgres_only,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TOKEN_RE = re.compile(r"/shop/d/([A-Za-z0-9_-]{43})/")
WEBHOOK_PATH = "/shop/stripe/webhook/"


# The scene -------------------------------------------------------------------------------------


class Site:
    """The processes of one test and the addresses they answer on."""

    def __init__(self, processes: Processes, shop_port: int, stripe_port: int, mail: Path):
        self.processes = processes
        self.shop_port = shop_port
        self.stripe_port = stripe_port
        self.mail = mail

    @property
    def shop(self) -> str:
        return f"http://127.0.0.1:{self.shop_port}"

    def post_event(self, event: dict) -> int:
        """Deliver ``event`` to the shop's webhook as Stripe does: signed, over HTTP."""
        payload = json.dumps(event).encode()
        request = urllib.request.Request(
            self.shop + WEBHOOK_PATH,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "Stripe-Signature": sign_payload(payload)},
        )
        return fetch(request)[0]

    def mails(self) -> list[Message]:
        """Every message the processes' file backend wrote (one file per send)."""
        if not self.mail.is_dir():
            return []
        found = []
        for path in sorted(self.mail.iterdir()):
            for chunk in path.read_text().split("\n" + "-" * 79 + "\n"):
                if chunk.strip():
                    found.append(email.message_from_string(chunk))
        return found


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(request: urllib.request.Request | str, **headers: str) -> tuple[int, dict, bytes]:
    """(status, headers, body), redirects not followed."""
    if isinstance(request, str):
        request = urllib.request.Request(request, headers=headers)

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def site(request, tmp_path, settings, transactional_db):
    """A shop in gunicorn (with the Stripe emulator in a second gunicorn, so "Stripe" can go
    away alone), everything on loopback; the test starts the cluster. ``broker``: "orm" or
    "redis" (when the test is parametrized with it)."""
    from django_q.models import Schedule

    broker = getattr(request, "param", "orm")
    shop_port, stripe_port = free_port(), free_port()
    mail = tmp_path / "mail"
    logs = tmp_path / "logs"
    logs.mkdir()
    stripe_base = f"http://127.0.0.1:{stripe_port}/stripe-emulator"
    name = f"faults-{uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_faults",
        "DATABASE_URL": database_url(connection.settings_dict["NAME"]),
        "WPD_Q_SYNC": "0",
        "WPD_Q_NAME": name,
        "WPD_FAULT_PRIVATE_ROOT": str(django_settings.PRIVATE_STORAGE_ROOT),
        "WPD_FAULT_MAIL_DIR": str(mail),
        "WPD_FAULT_STRIPE_API_BASE": stripe_base,
        "WPD_FAULT_WEBHOOK_URL": f"http://127.0.0.1:{shop_port}{WEBHOOK_PATH}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WPD_Q_REDIS", None)
    if broker == "redis":
        require_redis()
        env["WPD_Q_REDIS"] = REDIS_URL
    # This process checks out at the same emulator, over HTTP, with no rate limit in the way.
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STRIPE_API_BASE": stripe_base,
        "CHECKOUT_RATE_LIMIT": None,
    }
    # The cluster's scheduler is off; its ticker (tests/processes.py) queues the sweeps.
    Schedule.objects.all().delete()
    with started(env, logs) as processes:
        processes.gunicorn(shop_port, "shop")
        processes.gunicorn(stripe_port, "stripe")
        yield Site(processes, shop_port, stripe_port, mail)
        print(processes.outputs())  # shown when the test failed
    if broker == "redis":
        delete_redis_queue(REDIS_URL, name)


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


def checkout(product) -> Purchase:
    """A Buy click from a browser of its own: a pending purchase and its session at Stripe."""
    response = Client().post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    assert response.status_code == 303, response.content
    return Purchase.objects.order_by("-pk").first()


def pay(purchase: Purchase, email_address: str) -> dict:
    """The buyer pays at Stripe; returns the ``checkout.session.completed`` event Stripe would
    send (not sent: the test delivers it)."""
    session, events = actions.perform(
        purchase.stripe_checkout_session_id, "pay", {"email": email_address}
    )
    (obj,) = [obj for type_, obj in events if type_ == "checkout.session.completed"]
    return webhooks.make_event(obj, "checkout.session.completed")


def delivery_emails(site: Site) -> dict[str, list[Message]]:
    """The delivery emails written, by Message-ID."""
    found: dict[str, list[Message]] = {}
    for message in site.mails():
        found.setdefault(message["Message-ID"], []).append(message)
    return found


def all_sent(count: int):
    def sent() -> bool:
        return OutboundEmail.objects.filter(status=OutboundEmail.Status.SENT).count() >= count

    sent.__doc__ = f"{count} delivery email(s) sent"
    return sent


def assert_one_email_per_purchase(site: Site, purchases: list[Purchase]) -> None:
    """Each purchase's one delivery email, under its one Message-ID, to its buyer.

    A message is written more than once only if an attempt was cut off between the mail server
    taking it and the row saying sent (at least once, the same Message-ID: shown once).
    """
    by_id = delivery_emails(site)
    rows = {row.purchase_id: row for row in OutboundEmail.objects.all()}
    assert sorted(rows) == sorted(p.pk for p in purchases)
    assert set(by_id) == {row.message_id for row in rows.values()}
    for purchase in purchases:
        row = rows[purchase.pk]
        assert row.status == OutboundEmail.Status.SENT, row.last_error
        copies = by_id[row.message_id]
        assert len(copies) <= row.attempts, (row.pk, row.attempts, len(copies))
        assert {m["To"] for m in copies} == {Purchase.objects.get(pk=purchase.pk).email}


# 1. The mail server is down, then back --------------------------------------------------------


@pytest.mark.parametrize("site", ["orm", "redis"], indirect=True)
def test_mail_server_down_then_back_sends_exactly_one_delivery_email(site, product):
    """Django's file backend stands in for the mail server: while its directory is a plain
    file every send fails (as ``make sandbox`` does when its mail directory is broken)."""
    site.mail.write_text("a file where the mail directory should be")  # the server is down
    purchase = checkout(product)
    event = pay(purchase, "ada@example.com")
    site.processes.cluster()
    assert site.post_event(event) == 200

    def failed(times: int):
        def attempts_failed() -> bool:
            # A failed attempt revokes its link before it records the failure.
            return DownloadLink.objects.filter(revoked_at__isnull=False).count() >= times

        attempts_failed.__doc__ = f"{times} failed attempt(s)"
        return attempts_failed

    # The webhook's task pays the purchase; its delivery task fails; the sweep retries it
    # (the only retry there is: the broker dropped the failed task, or never re-delivers).
    wait_for(failed(2), 30)
    assert Purchase.objects.get(pk=purchase.pk).status == Purchase.Status.PAID
    assert not OutboundEmail.objects.filter(status=OutboundEmail.Status.SENT).exists()
    site.mail.unlink()  # the mail server is back
    wait_for(all_sent(1), 30)
    time.sleep(3)  # the sweeps keep coming: nothing more is sent

    row = OutboundEmail.objects.get()
    assert row.attempts >= 3, row.last_error
    (message,) = site.mails()
    assert message["Message-ID"] == row.message_id
    # Every failed attempt's link was revoked; the one delivered is the one that works.
    (token,) = set(TOKEN_RE.findall(message.as_string()))
    issued = DownloadLink.objects.filter(purchase=purchase)
    assert issued.count() == row.attempts
    assert [link.token_hash for link in issued.filter(revoked_at=None)] == [links.hash_token(token)]
    assert fetch(f"{site.shop}/shop/d/{token}/")[0] == 200


# 2. The cluster is killed in the middle of a burst of webhooks ---------------------------------

BURST = 30


@pytest.mark.parametrize("site", ["orm", "redis"], indirect=True)
def test_cluster_killed_mid_burst_then_restarted_pays_each_purchase_once_with_one_email(
    site, product
):
    purchases = [checkout(product) for _ in range(BURST)]
    events = [pay(p, f"buyer{i}@example.com") for i, p in enumerate(purchases)]
    cluster = site.processes.cluster()

    def paid() -> int:
        return Purchase.objects.filter(status=Purchase.Status.PAID).count()

    answers: list[int] = []
    killed_at: dict[str, int] = {}
    first, rest = events[: BURST // 2], events[BURST // 2 :]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers += pool.map(site.post_event, first)

        def some_paid() -> bool:
            """the cluster to pay a few purchases"""
            return paid() >= 3

        wait_for(some_paid, 30, every=0.05)
        # Mid-burst: the cluster dies with tasks queued, claimed and running.
        cluster.kill(signal.SIGKILL)
        killed_at["paid"] = paid()
        # Stripe keeps sending; the shop keeps storing.
        answers += pool.map(site.post_event, rest)
    assert answers == [200] * BURST
    assert killed_at["paid"] < BURST, "the cluster finished before it was killed"
    assert StripeEvent.objects.count() == BURST

    site.processes.cluster("cluster-restarted")

    def everyone_paid() -> bool:
        """every purchase paid"""
        return paid() == BURST

    def every_event_processed() -> bool:
        """every event processed (one whose worker died after paying waits for its lease)"""
        return set(StripeEvent.objects.values_list("status", flat=True)) == {"processed"}

    wait_for(everyone_paid, 45)
    wait_for(all_sent(BURST), 30)
    wait_for(every_event_processed, 45)
    time.sleep(2)  # anything sent twice would show now

    assert set(StripeEvent.objects.values_list("status", flat=True)) == {"processed"}
    for purchase in Purchase.objects.all():
        assert purchase.status == Purchase.Status.PAID and purchase.paid_at is not None
    assert_one_email_per_purchase(site, purchases)
    print(f"killed with {killed_at['paid']} of {BURST} paid")


# 3. Stripe unreachable during fulfillment, then back -------------------------------------------


@pytest.mark.parametrize("site", ["orm", "redis"], indirect=True)
def test_stripe_unreachable_during_fulfillment_is_retried_by_the_sweep_until_it_answers(
    site, product
):
    from django_q.models import Failure

    purchase = checkout(product)
    event = pay(purchase, "ada@example.com")
    stripe = next(g for g in site.processes.groups if g.name == "stripe")
    stripe.kill(signal.SIGKILL)  # "Stripe" is gone: connections to it are refused
    site.processes.cluster()

    assert site.post_event(event) == 200  # the webhook needs no Stripe call: stored, queued

    def failed_twice() -> bool:
        """the event's task to fail twice (the webhook's, then the sweep's retry)"""
        return Failure.objects.filter(func=inbox.TASK).count() >= 2

    wait_for(failed_twice, 40)
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEvent.Status.FAILED and stored.attempts >= 2
    assert "StripeUnavailable" in stored.last_error
    assert stored.next_attempt_at is not None  # a retry is planned, with backoff
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING
    assert not OutboundEmail.objects.exists() and not site.mails()

    site.processes.gunicorn(site.stripe_port, "stripe-back")

    def paid() -> bool:
        """the purchase to be paid"""
        return Purchase.objects.filter(pk=purchase.pk, status=Purchase.Status.PAID).exists()

    wait_for(paid, 30)
    wait_for(all_sent(1), 30)
    time.sleep(2)

    stored.refresh_from_db()
    assert stored.status == StripeEvent.Status.PROCESSED and stored.attempts >= 3
    assert_one_email_per_purchase(site, [purchase])
    assert len(site.mails()) == 1


# 4. A refund while webhooks are down; reconciliation applies it --------------------------------


def emulator(site: Site, purchase: Purchase, action: str, **params: str) -> dict:
    """Ask the emulator over HTTP, as ``manage.py trigger`` does (its control endpoint)."""
    from sandbox.stripe_emulator.control import emulator_control

    return emulator_control(purchase.stripe_checkout_session_id, action, params)


def link_of(site: Site, purchase: Purchase) -> str:
    """The download page the buyer's delivery email links to, on the shop server."""
    address = Purchase.objects.get(pk=purchase.pk).email
    (message,) = [m for m in site.mails() if m["To"] == address]
    (token,) = set(TOKEN_RE.findall(message.as_string()))
    return f"{site.shop}/shop/d/{token}/"


class Browser:
    """A buyer's browser: cookies, and the CSRF token of the last download page it showed."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), NoRedirect
        )
        self.csrf = ""

    def open(self, request: urllib.request.Request | str) -> tuple[int, dict, bytes]:
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def show(self, page: str) -> int:
        """Open the download page (keeping its form's CSRF token); its status."""
        status, _, body = self.open(page)
        found = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        if found:
            self.csrf = found.group(1).decode()
        return status

    def press(self, page: str, purchase: Purchase) -> tuple[int, str]:
        """The download button for the product's file on the page last shown (its form may be
        stale); (status, hand-off URL or "")."""
        file = purchase.product.specific.files.get()
        body = f"csrfmiddlewaretoken={self.csrf}".encode()
        request = urllib.request.Request(
            f"{page}{file.pk}/",
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Referer": page},
        )
        status, headers, _ = self.open(request)
        return status, headers.get("Location", "")


def refunded(purchase: Purchase):
    def done() -> bool:
        return Purchase.objects.filter(pk=purchase.pk, status=Purchase.Status.REFUNDED).exists()

    done.__doc__ = f"purchase {purchase.pk} to be refunded"
    return done


@pytest.mark.parametrize("site", ["orm", "redis"], indirect=True)
def test_refund_missed_by_webhooks_is_applied_by_reconciliation_and_the_link_dies(site, product):
    site.processes.cluster()
    ada, bob = checkout(product), checkout(product)
    # Paid at Stripe, whose webhooks reach the shop: delivered, each with its email.
    emulator(site, ada, "pay", email="ada@example.com")
    emulator(site, bob, "pay", email="bob@example.com")
    wait_for(all_sent(2), 30)
    pages = {p.pk: link_of(site, p) for p in (ada, bob)}
    browsers = {p.pk: Browser() for p in (ada, bob)}
    assert browsers[ada.pk].show(pages[ada.pk]) == 200
    assert browsers[bob.pk].show(pages[bob.pk]) == 200
    status, handoff = browsers[ada.pk].press(pages[ada.pk], ada)
    assert status == 303
    assert fetch(site.shop + handoff)[0] == 200  # Ada has her file

    # The shop's endpoint is down (the emulator holds webhooks back); Stripe refunds Ada.
    EmulatorSwitches.objects.update_or_create(pk=1, defaults={"webhooks_held": True})
    answer = emulator(site, ada, "refund")
    assert answer["webhooks"] == "held"
    time.sleep(2)
    assert Purchase.objects.get(pk=ada.pk).status == Purchase.Status.PAID
    assert fetch(pages[ada.pk])[0] == 200  # nobody told the shop

    # `manage.py reconcile` lists the event, stores it; the running cluster applies it.
    done = site.processes.manage("reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 new and queued" in done.stdout, done.stdout
    wait_for(refunded(ada), 30)
    assert fetch(pages[ada.pk])[0] == 410
    assert browsers[ada.pk].press(pages[ada.pk], ada)[0] == 410  # her page was still open
    assert fetch(site.shop + handoff)[0] == 410  # the hand-off she held dies with it

    # Bob's refund is found by the scheduled reconciliation (queued as the scheduler would).
    emulator(site, bob, "refund")
    time.sleep(1.1)  # Stripe's `created` is whole seconds: the run lists up to this one
    site.processes.enqueue("wagtail_paid_delivery.tasks.reconcile")
    wait_for(refunded(bob), 30)
    assert fetch(pages[bob.pk])[0] == 410
    assert browsers[bob.pk].press(pages[bob.pk], bob)[0] == 410

    # Each refund was stored once, by reconciliation (no webhook came), and applied once.
    refunds = StripeEvent.objects.filter(type="charge.refunded")
    assert refunds.count() == 2 and {e.status for e in refunds} == {"processed"}
    assert DownloadLink.objects.filter(revoked_at=None, purchase__in=[ada, bob]).count() == 0


# 5. The web server restarts mid-download; the buyer resumes ------------------------------------

#: Larger than what loopback's socket buffers hold, so the kill lands mid-body.
BIG = 24 * 1024 * 1024


def test_web_server_restart_mid_download_then_range_resume_counts_once(site, home):
    data = os.urandom(BIG)
    product = ProductPageFactory(parent=home, files=0, download_limit=3)
    file = ProductFileFactory(page=product, file=ContentFile(data, name="atlas.zip"))
    purchase = PurchaseFactory(paid=True, product=product)
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    shop = next(g for g in site.processes.groups if g.name == "shop")

    page, browser = f"{site.shop}/shop/d/{issued.token}/", Browser()
    assert browser.show(page) == 200
    status, handoff = browser.press(page, purchase)
    assert status == 303 and handoff

    # The download starts; the buyer has part of it when the server dies.
    conn = http.client.HTTPConnection("127.0.0.1", site.shop_port, timeout=30)
    conn.request("GET", handoff)
    response = conn.getresponse()
    assert response.status == 200
    etag = response.getheader("ETag")
    got = response.read(1024 * 1024)
    shop.kill(signal.SIGKILL)
    try:
        while chunk := response.read(64 * 1024):
            got += chunk
    except (http.client.IncompleteRead, ConnectionError) as exc:
        got += getattr(exc, "partial", b"")
    conn.close()
    assert 1024 * 1024 <= len(got) < BIG, len(got)
    assert data.startswith(got)

    site.processes.gunicorn(site.shop_port, "shop-restarted")
    # The browser resumes on the same hand-off, where it stopped.
    resume = {"Range": f"bytes={len(got)}-", "If-Range": etag}
    status, headers, rest = fetch(site.shop + handoff, **resume)
    assert status == 206, rest[:500]
    assert headers["Content-Range"] == f"bytes {len(got)}-{BIG - 1}/{BIG}"
    assert hashlib.sha256(got + rest).hexdigest() == file.sha256

    # One download: the first request counted, the resume rode on it.
    assert FileDownloadCount.objects.get(link=issued.link, file_id=file.pk).count == 1
    assert DownloadLink.objects.get(pk=issued.link.pk).download_count == 1
    served = DownloadEvent.objects.filter(link=issued.link, outcome="served").order_by("pk")
    assert [e.counted for e in served] == [True, False]
    state = DownloadHandoff.objects.get()
    assert state.bytes_promised == BIG + (BIG - len(got))
