"""A real django-q2 cluster, a mail server that is down and comes back: one delivery email.

As in tests/test_qcluster.py, the launcher runs a child pytest with ``WPD_Q_SYNC=0``, which
starts a ``Cluster`` (sentinel, pusher, worker processes forked from it, so they share its
in-memory Stripe fake and its settings) against the child's test database. It runs once with the
ORM broker and once with the Redis broker (``WPD_Q_REDIS``), which never re-delivers a task: in
both, only the app's own sweep brings the email back. Like the other process-level fault tests
it runs once, on PostgreSQL.

The "mail server" is Django's file backend: while its directory is a plain file, every send
fails (as ``make sandbox`` does when its mail directory is broken); removing the file brings it
back. Retry delays are shortened to a second; the scheduler's minute is stood in for by the test,
which queues the email sweep task every half second.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django_q.conf import Conf

from tests.conftest import REQUIRE_SYSTEM_DEPS
from tests.factories import ProductPageFactory, PurchaseFactory
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from wagtail_paid_delivery.links import hash_token
from wagtail_paid_delivery.models import DownloadLink, OutboundEmail, Purchase

ROOT = Path(__file__).resolve().parent.parent
SWEEP = "wagtail_paid_delivery.tasks.sweep_emails"
#: The Redis database the Redis run uses (its queue key is named for the child process too).
REDIS_URL = os.environ.get("WPD_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
TOKEN_RE = re.compile(r"/shop/d/([A-Za-z0-9_-]{43})/")


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Conf.SYNC, reason="this is the launcher; the cluster test runs below")
@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="process-level fault tests run once, on PostgreSQL (DATABASE_URL=postgres://…)",
)
@pytest.mark.parametrize("broker", ["orm", "redis"])
def test_a_real_cluster_sends_one_delivery_email_once_the_mail_server_is_back(broker):
    env = {**os.environ, "WPD_Q_SYNC": "0"}
    if broker == "redis":
        if not redis_answers():
            message = "Redis is not answering on 127.0.0.1:6379"
            if REQUIRE_SYSTEM_DEPS:
                pytest.fail(f"{message}. WPD_REQUIRE_SYSTEM_DEPS=1 requires it.", pytrace=False)
            pytest.skip(message)
        env["WPD_Q_REDIS"] = REDIS_URL
    # Its own database, so the child's test database collides with no other run.
    env["DATABASE_URL"] = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + f"/wpd_outbox_{broker}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::test_cluster_retries_until_sent"]
        + ["-q", "-p", "no:cacheprovider", "--create-db"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output
    print(f"{broker}: {time.monotonic() - started:.1f}s")


def wait_for(condition, seconds: float = 30, *, every: float = 0.2, then=None) -> None:
    """Poll ``condition`` until it holds; ``then`` runs before each poll (queues a sweep)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if then is not None:
            then()
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds}s waiting for {condition.__doc__}")


@pytest.mark.skipif(Conf.SYNC, reason="needs WPD_Q_SYNC=0; run through the launcher above")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_cluster_retries_until_sent(client, home, fake_stripe, settings, tmp_path):
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster
    from django_q.tasks import async_task

    mail_dir = tmp_path / "mail"
    mail_dir.write_text("a file where the mail directory should be")  # the mail server is down
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = str(mail_dir)
    settings.WAGTAIL_PAID_DELIVERY = {
        **SETTINGS,
        "EMAIL_RETRY_DELAY": 1,
        "EMAIL_RETRY_MAX_DELAY": 1,
    }

    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")
    assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200

    def failed(times):
        def attempts_failed():
            # A failed attempt revokes its link before it records the failure.
            return DownloadLink.objects.filter(revoked_at__isnull=False).count() >= times

        attempts_failed.__doc__ = f"{times} failed attempt(s)"
        return attempts_failed

    def sent():
        """the delivery email to be sent"""
        return OutboundEmail.objects.filter(status=OutboundEmail.Status.SENT).exists()

    def sweep():
        async_task(SWEEP)

    # The cluster's processes are forked from here: hand them no open connection.
    connection.close()
    broker = get_broker()
    cluster = Cluster(broker)
    cluster.start()
    try:
        # The webhook's task pays the purchase; its delivery task fails: no mail directory.
        wait_for(failed(1))
        assert Purchase.objects.get(pk=purchase.pk).status == Purchase.Status.PAID
        assert not sent()
        # Failed attempts are retried only by the sweep; it runs while the server is still down.
        wait_for(failed(2), then=sweep, every=0.5)
        mail_dir.unlink()  # the mail server is back
        wait_for(sent, then=sweep, every=0.5)
        # Sweeps keep coming (and a late copy of the delivery task): nothing more is sent.
        for _ in range(4):
            sweep()
        async_task("wagtail_paid_delivery.tasks.send_delivery_email", purchase.pk)
        time.sleep(3)
    finally:
        cluster.stop()
        if Conf.REDIS:
            broker.delete_queue()

    email = OutboundEmail.objects.get()
    assert email.status == OutboundEmail.Status.SENT and email.attempts >= 3, email.last_error
    files = list(mail_dir.iterdir())
    assert len(files) == 1, files
    text = files[0].read_text()
    assert text.count("Message-ID:") == 1
    assert f"Message-ID: {email.message_id}" in text
    # Every failed attempt's link was revoked; the one delivered is the one that works.
    (token,) = set(TOKEN_RE.findall(text))
    links = DownloadLink.objects.filter(purchase=purchase)
    assert links.count() == email.attempts
    assert [link.token_hash for link in links.filter(revoked_at=None)] == [hash_token(token)]
