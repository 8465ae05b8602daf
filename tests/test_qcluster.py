"""A real django-q2 cluster processes a webhook: posted → stored → ORM queue → worker → paid.

django-q2 reads ``Q_CLUSTER`` at import, and the suite runs it in sync mode, so the real-cluster
test runs in a child pytest with ``WPD_Q_SYNC=0`` (asynchronous: the view's enqueue is a row in
the ORM broker's queue). There, a ``Cluster`` is started (it forks its sentinel, pusher and
worker, which inherit the in-memory Stripe fake) against the child's test database.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import connection
from django_q.conf import Conf

from tests.factories import ProductPageFactory, PurchaseFactory
from tests.processes import ROOT, wait_for
from tests.stripe_fake import event_for, post_event, start_checkout
from wagtail_paid_delivery.models import Purchase, StripeEvent

TASK = "wagtail_paid_delivery.tasks.process_stripe_event"


@pytest.mark.slow
@pytest.mark.skipif(not Conf.SYNC, reason="this is the launcher; the cluster test runs below")
def test_webhook_is_processed_by_a_real_qcluster():
    env = {**os.environ, "WPD_Q_SYNC": "0"}
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        # Its own database, so the child's test database does not collide with ours.
        env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/wpd_qcluster"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::test_cluster_fulfils_posted_webhook"]
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


@pytest.mark.skipif(Conf.SYNC, reason="needs WPD_Q_SYNC=0; run through the launcher above")
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_cluster_fulfils_posted_webhook(client, home, fake_stripe):
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster
    from django_q.models import OrmQ, Success

    purchase = PurchaseFactory(product=ProductPageFactory(parent=home))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com")

    response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    # Enqueued, not run: the view answered without doing the work.
    assert OrmQ.objects.count() == 1
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PENDING

    # The cluster's processes are forked from here: hand them no open connection.
    connection.close()
    cluster = Cluster(get_broker())
    cluster.start()

    def fulfilled() -> bool:
        """the purchase paid, and the task's result saved (just after it returns)"""
        paid = Purchase.objects.filter(pk=purchase.pk, status=Purchase.Status.PAID).exists()
        return paid and Success.objects.filter(func=TASK).exists()

    try:
        wait_for(fulfilled, 60)
    finally:
        cluster.stop()

    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.PROCESSED and event.attempts == 1
    task = Success.objects.get(func=TASK)
    assert task.result == "fulfilled"
