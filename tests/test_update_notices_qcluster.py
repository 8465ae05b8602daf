"""An update notice's run on a real django-q2 cluster: interrupted, resumed, nobody emailed twice.

As in ``test_qcluster``, the cluster runs in a child pytest with ``WPD_Q_SYNC=0`` (tasks are rows
in the ORM broker's queue). The cluster's processes are forked from the test, so they send with
the file-based email backend set here: every message they send is a file the test reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.processes import ROOT, wait_for
from wagtail_paid_delivery import outbox, update_runs
from wagtail_paid_delivery.models import OutboundEmail, Purchase, UpdateNotice, UpdateRecipient

SUBJECT = "Version 2 is out"


@pytest.mark.slow
@pytest.mark.skipif(not Conf.SYNC, reason="this is the launcher; the cluster test runs below")
def test_update_run_is_resumed_by_a_real_qcluster():
    env = {**os.environ, "WPD_Q_SYNC": "0"}
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/wpd_qcluster_updates"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::test_cluster_resumes_an_interrupted_run"]
        + ["-q", "-p", "no:cacheprovider", "--create-db"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed" in output, output


def delivered(mailbox: Path) -> list[str]:
    """The recipient of every message the cluster's workers sent."""
    found = []
    for path in mailbox.glob("*.log"):
        text = path.read_text()
        for message in text.split("-" * 79):
            if f"Subject: {SUBJECT}" in message:
                found.append(re.search(r"^To: (.+)$", message, re.M).group(1).strip().lower())
    return sorted(found)


def state() -> str:
    """what the outbox and the cluster's results say (for a failure's message)"""
    from django_q.models import Success

    emails = list(OutboundEmail.objects.values_list("pk", "to", "status", "attempts", "last_error"))
    results = list(Success.objects.values_list("func", "result"))
    return f"emails {emails}; results {results}"


def wait_until(condition, seconds: float) -> None:
    try:
        wait_for(condition, seconds)
    except AssertionError as error:
        raise AssertionError(f"{error}; {state()}") from error


def until_delivered(mailbox: Path, count: int, seconds: float = 90) -> None:
    """Wait until ``count`` update emails arrived, running the email sweep and the update
    notices' task every few seconds (as their schedules do every minute): a task that failed
    (SQLite's one writer may say "database is locked" while the cluster's monitor writes) is
    retried, as in production."""
    from django_q.tasks import async_task

    deadline = time.monotonic() + seconds
    while len(delivered(mailbox)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(delivered(mailbox))} of {count} delivered; {state()}")
        async_task("wagtail_paid_delivery.tasks.sweep_emails")
        async_task("wagtail_paid_delivery.tasks.update_notices")
        time.sleep(3)


def start_cluster():
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster

    connection.close()  # the cluster's processes are forked from here
    cluster = Cluster(get_broker())
    cluster.start()
    return cluster


@pytest.mark.skipif(Conf.SYNC, reason="needs WPD_Q_SYNC=0; run through the launcher above")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_cluster_resumes_an_interrupted_run(home, settings, tmp_path, monkeypatch):
    from django_q.models import OrmQ, Schedule, Success
    from django_q.tasks import async_task

    mailbox = tmp_path / "mail"
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = str(mailbox)
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "UPDATE_EMAILS_PER_MINUTE": 2,
        "EMAIL_RETRY_DELAY": 1,
        "EMAIL_RETRY_MAX_DELAY": 2,
    }
    # Minutes become seconds here and in the cluster's processes (forked from this one): a
    # first batch whose task failed is started again by the schedule's task soon.
    monkeypatch.setattr(update_runs, "STUCK_AFTER", timedelta(seconds=2))
    # The tasks this test hands the cluster are the schedules' own; none runs on its own.
    Schedule.objects.all().delete()
    product = ProductPageFactory(parent=home, title="Plugin")
    buyers = [
        PurchaseFactory(product=product, paid=True, email=f"user{i}@example.com") for i in range(5)
    ]
    PurchaseFactory(product=product, paid=True, email="gone@example.com", status="refunded")

    product.notify_buyers = True
    product.update_subject, product.update_message = SUBJECT, "Faster, and a new icon."
    product.save_revision().publish()
    notice = UpdateNotice.objects.get()
    assert OrmQ.objects.count() == 1  # the first batch, queued, not run

    # 1. The first batch runs on the cluster; then the cluster stops.
    cluster = start_cluster()
    try:
        until_delivered(mailbox, 2)
    finally:
        cluster.stop()
    assert OutboundEmail.objects.filter(kind="update", status="sent").count() == 2

    # 2. The second batch is promised, and the process dies before its tasks reach the broker.
    UpdateNotice.objects.filter(pk=notice.pk).update(next_batch_at=timezone.now())
    assert update_runs.send_batch(notice.pk) == "queued 2"
    OrmQ.objects.all().delete()
    assert len(delivered(mailbox)) == 2

    # 3. A new cluster: the email sweep and the update schedule's task (what the schedules run
    # every minute) resume the run; the minute has passed.
    OutboundEmail.objects.update(created_at=timezone.now() - outbox.STUCK_AFTER)
    UpdateNotice.objects.filter(pk=notice.pk).update(
        next_batch_at=timezone.now() - timedelta(seconds=1)
    )
    cluster = start_cluster()
    try:
        # One task at a time: SQLite has one writer (PostgreSQL runs them side by side).
        async_task("wagtail_paid_delivery.tasks.sweep_emails")
        until_delivered(mailbox, 4)
        async_task("wagtail_paid_delivery.tasks.update_notices")
        until_delivered(mailbox, 5)
        # The first batch's task delivered again (at least once): it queues nothing new.
        async_task("wagtail_paid_delivery.tasks.send_update_batch", notice.pk)
        wait_until(lambda: Success.objects.filter(result="all queued").exists(), 60)
    finally:
        cluster.stop()

    expected = sorted(p.email for p in buyers)
    assert delivered(mailbox) == expected  # each buyer once; the refunded buyer never
    notice.refresh_from_db()
    assert notice.queued_at is not None and notice.batches == 3
    assert UpdateRecipient.objects.filter(notice=notice).count() == 5
    assert not UpdateRecipient.objects.filter(purchase__status=Purchase.Status.REFUNDED).exists()
