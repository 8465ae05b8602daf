"""More than one server, for real: the reference deployment of docs/deployment.md under a burst.

On 127.0.0.1 only, against this test's PostgreSQL database: two app servers (gunicorn, the
shop) behind one nginx (tests/multiserver_nginx.conf: an ``upstream`` of both, product files
sent by nginx through X-Accel-Redirect), two django-q2 clusters on the **Redis** broker taking
from one queue, and the sandbox's Stripe emulator in a gunicorn of its own as Stripe (answering
each call after a short delay, as Stripe does). The processes' settings are
``tests.settings_multiserver``.

This process sets the scene (checkouts through the real Buy view, each from a browser of its
own, paid at "Stripe"), then acts as Stripe and as the buyers, everything through nginx: a burst
of signed ``checkout.session.completed`` webhooks (a tenth sent twice, the order shuffled),
spread over both app servers, while a third of the buyers load their success page (which
settles a pending purchase itself, racing the clusters). Mid-burst one cluster's process group
gets SIGKILL: the tasks its pusher had taken from Redis (django-q2's Redis broker pops a task;
nothing gives it back) and the events its workers had claimed are lost with it, so only the app's
own sweeps, run by the surviving cluster, bring them back. Then buyers download in parallel at
their limit, through both servers. Every purchase must be paid once with one delivery email, and
no download may pass the limit.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import string
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.urls import reverse

from tests.concurrency import run_at_once
from tests.conftest import require_executable
from tests.factories import ProductFileFactory, ProductPageFactory
from tests.processes import (
    REDIS_URL,
    ROOT,
    Group,
    Processes,
    database_url,
    delete_redis_queue,
    free_port,
    http_answers,
    postgres_only,
    require_redis,
    started,
    wait_for,
)
from tests.test_faults import (
    TOKEN_RE,
    WEBHOOK_PATH,
    Browser,
    Site,
    all_sent,
    assert_one_email_per_purchase,
    delivery_emails,
    fetch,
    pay,
)
from tests.test_nginx import MAIN_CONFIG, readme_log_config
from wagtail_paid_delivery import binding, inbox
from wagtail_paid_delivery.models import (
    DownloadEvent,
    FileDownloadCount,
    OutboundEmail,
    Purchase,
    StripeEvent,
)

#: The nginx site the guide quotes (docs/deployment.md), run here as it is.
NGINX_SITE = Path(__file__).with_name("multiserver_nginx.conf")
BURST = 45
DUPLICATES = 0.1
#: Every third buyer loads the success page while the webhooks arrive.
SUCCESS_PAGE_EVERY = 3
#: What each call to "Stripe" waits (its API takes a while): keeps the clusters' queues full.
STRIPE_DELAY_MS = 40
DOWNLOAD_LIMIT = 2
#: Buyers who download at once at the end, each pressing more often than the limit allows.
DOWNLOADERS = 4
PRESSES = 5
DATA = os.urandom(96 * 1024)


@dataclass
class Deployment:
    """The processes of the reference deployment and how to reach them."""

    processes: Processes
    site: Site  # "the shop" is nginx's address
    apps: list[Group]
    clusters: list[Group]
    queue: str

    @property
    def url(self) -> str:
        return self.site.shop


def nginx_config(tmp: Path, port: int, app_ports: list[int], binary: str) -> Path:
    """nginx's main configuration around the guide's site file, filled in for this run."""
    site = string.Template(NGINX_SITE.read_text()).safe_substitute(
        APP_SERVER_1=f"127.0.0.1:{app_ports[0]}",
        APP_SERVER_2=f"127.0.0.1:{app_ports[1]}",
        LISTEN=f"127.0.0.1:{port}",
        ACCESS_LOG=str(tmp / "access.log"),
        PRIVATE_STORAGE_ROOT=str(Path(django_settings.PRIVATE_STORAGE_ROOT).resolve()),
    )
    assert not re.search(r"\$\{[A-Z0-9_]+\}", site), "a placeholder was left unfilled"
    mime_types = Path(binary).resolve().parent.parent.parent / "etc" / "nginx" / "mime.types"
    config = MAIN_CONFIG.format(
        # As root, nginx's workers would switch to "nobody", who cannot read the test's files.
        user="user root;" if os.geteuid() == 0 else "",
        tmp=tmp,
        mime_types=mime_types if mime_types.exists() else "/etc/nginx/mime.types",
        site=readme_log_config() + "\n" + site,
    )
    path = tmp / "nginx.conf"
    path.write_text(config)
    tested = subprocess.run([binary, "-t", "-p", str(tmp), "-c", str(path)], capture_output=True)
    assert tested.returncode == 0, tested.stderr.decode()
    return path


def start_all(starts: list[partial]) -> list[Group]:
    """Start several processes at once (each start waits until its process is ready)."""
    with ThreadPoolExecutor(len(starts)) as pool:
        return list(pool.map(lambda start: start(), starts))


@pytest.fixture
def deployment(tmp_path, settings, transactional_db):
    require_redis()
    nginx = require_executable("nginx", "/usr/sbin/nginx")
    port, stripe_port = free_port(), free_port()
    app_ports = [free_port(), free_port()]
    logs = tmp_path / "logs"
    logs.mkdir()
    stripe_base = f"http://127.0.0.1:{stripe_port}/stripe-emulator"
    queue = f"multiserver-{uuid4().hex[:12]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_multiserver",
        "DATABASE_URL": database_url(connection.settings_dict["NAME"]),
        "WPD_Q_SYNC": "0",
        "WPD_Q_REDIS": REDIS_URL,
        "WPD_Q_NAME": queue,
        "WPD_FAULT_PRIVATE_ROOT": str(django_settings.PRIVATE_STORAGE_ROOT),
        "WPD_FAULT_MAIL_DIR": str(tmp_path / "mail"),
        "WPD_FAULT_STRIPE_API_BASE": stripe_base,
        "WPD_FAULT_WEBHOOK_URL": f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        "STRIPE_EMULATOR_DELAY_MS": str(STRIPE_DELAY_MS),
        "PYTHONUNBUFFERED": "1",
    }
    # This process checks out at the same emulator, over HTTP, with no rate limit in the way.
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STRIPE_API_BASE": stripe_base,
        "CHECKOUT_RATE_LIMIT": None,
    }
    config = nginx_config(tmp_path, port, app_ports, nginx)
    try:
        with started(env, logs) as processes:
            # The clusters' scheduler is off; their ticker (tests/processes.py) queues the
            # sweeps every second.
            groups = start_all(
                [
                    partial(processes.gunicorn, stripe_port, "stripe"),
                    partial(processes.gunicorn, app_ports[0], "app-1"),
                    partial(processes.gunicorn, app_ports[1], "app-2"),
                    partial(processes.cluster, "cluster-1"),
                    partial(processes.cluster, "cluster-2"),
                ],
            )
            proxy = processes.start("nginx", [nginx, "-p", str(tmp_path), "-c", str(config)])
            wait_for(lambda: http_answers(port), 10, every=0.05)
            assert proxy.popen.poll() is None, proxy.output()
            yield Deployment(
                processes=processes,
                site=Site(processes, port, stripe_port, tmp_path / "mail"),
                apps=groups[1:3],
                clusters=groups[3:],
                queue=queue,
            )
            print(processes.outputs())  # shown when the test failed
    finally:
        delete_redis_queue(REDIS_URL, queue)


# The buyers ------------------------------------------------------------------------------------


@dataclass
class Buyer:
    purchase: Purchase
    cookie: str  # the binding cookie of the browser that clicked Buy
    event: dict  # the checkout.session.completed event Stripe sends

    def success_page(self, base: str) -> tuple[int, str]:
        """Load the success page Stripe sends this browser back to; (status, link token)."""
        session = self.purchase.stripe_checkout_session_id
        status, _, body = fetch(
            f"{base}/shop/thanks/?session_id={session}",
            Cookie=f"{binding.COOKIE_NAME}={self.cookie}",
        )
        found = TOKEN_RE.search(body.decode())
        return status, found.group(1) if found else ""


def buy(product, n: int) -> Buyer:
    """A Buy click from a browser of its own, then the payment at Stripe."""
    client = Client()
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN="http://testserver",
    )
    assert response.status_code == 303, response.content
    purchase = Purchase.objects.order_by("-pk").first()
    event = pay(purchase, f"buyer{n}@example.com")
    return Buyer(purchase, client.cookies[binding.COOKIE_NAME].value, event)


def deliveries(buyers: list[Buyer], rng: random.Random) -> list[dict]:
    """What Stripe sends: every event, a tenth of them twice, in a shuffled order."""
    events = [b.event for b in buyers]
    sent = events + rng.sample(events, int(len(events) * DUPLICATES))
    rng.shuffle(sent)
    return sent


# What the test reads ---------------------------------------------------------------------------


def queued_event_tasks(queue: str) -> int:
    """How many event tasks wait in the Redis queue (tasks are signed with the queue's name)."""
    import redis
    from django_q import core_signing
    from django_q.signing import PickleSerializer

    raw = redis.Redis.from_url(REDIS_URL).lrange(f"django_q:{queue}:q", 0, -1)
    tasks = [
        core_signing.loads(
            item, key=django_settings.SECRET_KEY, salt=queue, serializer=PickleSerializer
        )
        for item in raw
    ]
    return sum(task["func"] == inbox.TASK for task in tasks)


def fetch_from(source: str, url: str, **headers: str) -> int:
    """GET ``url`` from the loopback address ``source`` (another "client" than this one)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def requests_served(app: Group, pattern: str) -> int:
    """Requests matching ``pattern`` in an app server's access log (gunicorn's, in its output)."""
    return len(re.findall(pattern, app.log.read_text(errors="replace")))


def paid() -> int:
    return Purchase.objects.filter(status=Purchase.Status.PAID).count()


# The test --------------------------------------------------------------------------------------


def test_the_deployment_guide_quotes_the_nginx_site_this_test_runs():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert NGINX_SITE.read_text().strip() in guide


@pytest.mark.slow
@postgres_only
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_servers_two_clusters_one_killed_mid_burst_nothing_lost_none_twice(deployment, home):
    product = ProductPageFactory(
        parent=home, title="Launch guide", files=0, download_limit=DOWNLOAD_LIMIT
    )
    ProductFileFactory(page=product, title="Guide", file=ContentFile(DATA, name="guide.pdf"))
    buyers = [buy(product, n) for n in range(BURST)]
    watchers = buyers[::SUCCESS_PAGE_EVERY]
    doomed, survivor = deployment.clusters

    rng = random.Random(15)  # noqa: S311  (an order for the test, not a secret)
    posts = deliveries(buyers, rng)
    half = len(posts) // 2
    answers: list[int] = []
    pages: list[tuple[Buyer, tuple[int, str]]] = []
    kill: dict[str, int] = {}
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        # Stripe's first deliveries and the first buyers back from Checkout, at once.
        first_pages = pool.map(lambda b: b.success_page(deployment.url), watchers)
        answers += pool.map(deployment.site.post_event, posts[:half])
        pages += zip(watchers, first_pages, strict=True)

        # Killed as soon as the first half is acknowledged: since the paying task got cheaper,
        # waiting for purchases to be paid first could find the queue already drained.
        kill["backlog"] = queued_event_tasks(deployment.queue)
        # Mid-burst: one cluster dies with the tasks it took from Redis and the events it holds.
        doomed.kill(signal.SIGKILL)
        kill["paid"] = paid()
        # Stripe keeps sending, buyers keep coming back; the shop keeps answering.
        later_pages = pool.map(lambda b: b.success_page(deployment.url), watchers)
        answers += pool.map(deployment.site.post_event, posts[half:])
        pages += zip(watchers, later_pages, strict=True)
    assert answers == [200] * len(posts)
    assert all(status == 200 for _, (status, _) in pages), Counter(s for _, (s, _) in pages)
    assert kill["paid"] < BURST, "the burst was over before the cluster was killed"
    # Tasks were still waiting in Redis, so the killed cluster's pusher held some it had popped:
    # those are gone from the broker, and only the sweep can bring them back.
    assert kill["backlog"] > 0, "the killed cluster held no task taken from Redis"
    assert StripeEvent.objects.count() == BURST

    # Both app servers took webhooks: nginx spread the burst.
    def served() -> list[int]:
        return [requests_served(app, r'"POST /shop/stripe/webhook/') for app in deployment.apps]

    def all_logged() -> bool:
        """gunicorn to write the access log line of every webhook (after its answer)"""
        return sum(served()) >= len(posts)

    wait_for(all_logged, 10, every=0.05)
    webhooks = served()
    assert sum(webhooks) == len(posts) and min(webhooks) > 0, webhooks

    def everyone_paid() -> bool:
        """every purchase paid"""
        return paid() == BURST

    wait_for(everyone_paid, 60)
    wait_for(all_sent(BURST), 45)

    def every_event_processed() -> bool:
        """the sweep to bring back the events the killed cluster held (their purchases may be
        paid already, by a success page or a duplicate delivery)"""
        return not StripeEvent.objects.exclude(status="processed").exists()

    wait_for(every_event_processed, 60)
    took = time.monotonic() - start
    time.sleep(2)  # anything paid or sent twice would show now
    assert survivor.popen.poll() is None, survivor.output()

    # Every purchase paid once, with one delivery email.
    assert set(StripeEvent.objects.values_list("status", flat=True)) == {"processed"}
    for purchase in Purchase.objects.all():
        assert purchase.status == Purchase.Status.PAID and purchase.paid_at is not None
    assert_one_email_per_purchase(deployment.site, [b.purchase for b in buyers])
    retried = StripeEvent.objects.filter(attempts__gt=1).count()

    # The success page: one link per purchase, whichever server answered, however often.
    for buyer in watchers:
        status, token = buyer.success_page(deployment.url)
        assert status == 200 and token
        earlier = {t for b, (_, t) in pages if b is buyer and t}
        assert earlier <= {token}, "a reload on another server showed another link"

    # Downloads at the limit, in parallel, through both servers and nginx.
    emails = delivery_emails(deployment.site)
    rows = {row.purchase_id: row for row in OutboundEmail.objects.all()}
    calls, owners = [], []
    for buyer in buyers[:DOWNLOADERS]:
        message = emails[rows[buyer.purchase.pk].message_id][0]
        (token,) = set(TOKEN_RE.findall(message.as_string()))
        page = f"{deployment.url}/shop/d/{token}/"
        browser = Browser()
        assert browser.show(page) == 200
        for _ in range(PRESSES):
            status, handoff = browser.press(page, buyer.purchase)
            assert status == 303 and handoff, status
            calls.append(partial(fetch, deployment.url + handoff))
            owners.append(buyer.purchase.pk)
    status, spare = browser.press(page, buyers[DOWNLOADERS - 1].purchase)  # for later
    assert status == 303 and spare
    results = run_at_once(calls)
    for buyer in buyers[:DOWNLOADERS]:
        mine = [r for r, owner in zip(results, owners, strict=True) if owner == buyer.purchase.pk]
        served = [body for status, _, body in mine if status == 200]
        assert len(served) == DOWNLOAD_LIMIT and all(body == DATA for body in served)
        assert sorted(status for status, _, _ in mine) == [200] * DOWNLOAD_LIMIT + [410] * (
            PRESSES - DOWNLOAD_LIMIT
        )
        counts = FileDownloadCount.objects.filter(link__purchase=buyer.purchase)
        assert [c.count for c in counts] == [DOWNLOAD_LIMIT]
        served_events = DownloadEvent.objects.filter(
            link__purchase=buyer.purchase, outcome="served", counted=True
        )
        assert served_events.count() == DOWNLOAD_LIMIT
    handoffs = [requests_served(app, r'"GET /shop/d/h/') for app in deployment.apps]
    assert sum(handoffs) == len(calls) and min(handoffs) > 0, handoffs

    # The buyer's address, not nginx's, and not the one a client forges: from 127.0.5.2, with a
    # made-up X-Forwarded-For, the refused request is recorded as 127.0.5.0 (truncated).
    forged = {"X-Forwarded-For": "203.0.113.9"}
    assert fetch_from("127.0.5.2", deployment.url + spare, **forged) == 410
    refused = DownloadEvent.objects.filter(link__purchase=buyers[DOWNLOADERS - 1].purchase)
    assert refused.latest("pk").ip_address == "127.0.5.0"

    # The self-test, as a site owner runs it after a deploy: probes through nginx included.
    done = deployment.processes.manage("delivery_selftest", "--base-url", deployment.url)
    assert done.returncode == 0 and "FAIL" not in done.stdout, done.stdout + done.stderr

    cores = os.cpu_count() or 1
    print(
        f"{BURST} purchases ({len(posts)} webhooks) over 2 app servers and 2 clusters; killed "
        f"one with {kill['paid']} paid and {kill['backlog']} event tasks queued in Redis; "
        f"{retried} event(s) claimed again after the kill; all paid and emailed in {took:.1f} s: "
        f"{BURST / took:.2f} purchases/s, {BURST / took / cores:.2f} per core ({cores} cores)"
    )
