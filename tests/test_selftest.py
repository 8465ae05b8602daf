"""``manage.py delivery_selftest``: passes on a sound site, fails (exit 1) when a private file is
public, the schedules are missing or an event is stuck. The HTTP probes are real requests to a
live server."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from wagtail_paid_delivery import inbox
from wagtail_paid_delivery.models import StripeEvent
from wagtail_paid_delivery.schedules import ensure_schedules

# live_server flushes the database afterwards: restore the migrated rows (root page, content
# types, the default copy) as every transactional test here does.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def site(live_server, settings):
    settings.WAGTAILADMIN_BASE_URL = live_server.url
    ensure_schedules()
    return live_server


def selftest(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("delivery_selftest", *args, stdout=out, stderr=StringIO())
    except SystemExit as exc:  # pragma: no cover - call_command raises CommandError instead
        return int(exc.code or 0), out.getvalue()
    except Exception as exc:
        from django.core.management import CommandError

        assert isinstance(exc, CommandError)
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def test_selftest_passes_on_a_sound_site(site):
    code, out = selftest()
    assert code == 0, out
    assert "FAIL" not in out
    assert out.count("OK ") >= 6
    assert "Private file not reachable through MEDIA_URL" in out
    assert "Private file not reachable through the storage's unsigned url()" in out
    assert site.url in out  # the probes asked the live server


def test_selftest_removes_its_probe_file(site, settings):
    from pathlib import Path

    selftest()
    probe_dir = Path(settings.PRIVATE_STORAGE_ROOT) / "selftest"
    assert not probe_dir.exists() or not any(p.is_file() for p in probe_dir.rglob("*"))


def test_selftest_fails_when_private_files_live_in_a_served_media_root(site, settings):
    # Product storage written inside MEDIA_ROOT, and a site that serves MEDIA_ROOT.
    settings.ROOT_URLCONF = "tests.urls_private_storage"
    settings.PRIVATE_STORAGE_ROOT = settings.MEDIA_ROOT
    code, out = selftest()
    assert code == 1, out
    assert "FAIL Private file not reachable through MEDIA_URL" in out
    assert "answered 200 with the file's bytes" in out
    assert "hint: Product files must live outside MEDIA_ROOT" in out


def test_selftest_fails_when_the_storage_url_is_public(site, settings):
    settings.ROOT_URLCONF = "tests.urls_private_storage"
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "STORAGE": "tests.test_selftest.PublicStorage",
    }
    code, out = selftest()
    assert code == 1, out
    assert "FAIL Private file not reachable through the storage's unsigned url()" in out


class PublicStorage:
    """A FileSystemStorage under MEDIA_ROOT whose url() is public (the mistake to catch)."""

    def __new__(cls):
        from django.conf import settings
        from django.core.files.storage import FileSystemStorage

        return FileSystemStorage(
            location=settings.MEDIA_ROOT + "/public-products",
            base_url=settings.MEDIA_URL + "public-products/",
        )


def test_selftest_fails_when_the_schedules_are_missing(site):
    Schedule.objects.filter(name="wagtail_paid_delivery.sweep").delete()
    code, out = selftest()
    assert code == 1, out
    assert "FAIL Schedules exist: missing: wagtail_paid_delivery.sweep" in out


@pytest.mark.parametrize("stuck", ["waiting", "failed for good"])
def test_selftest_fails_when_an_event_is_stuck(site, stuck):
    old = timezone.now() - inbox.STUCK_AFTER - timedelta(minutes=1)
    StripeEvent.objects.create(
        stripe_id="evt_stuck",
        type="checkout.session.completed",
        payload={},
        received_at=old,
        status=StripeEvent.Status.RECEIVED if stuck == "waiting" else StripeEvent.Status.FAILED,
        attempts=0 if stuck == "waiting" else 99,
    )
    code, out = selftest()
    assert code == 1, out
    assert f"FAIL No Stripe event stuck: 1 {stuck}" in out


@pytest.mark.parametrize("stuck", ["waiting", "failed for good"])
def test_selftest_fails_when_an_email_is_stuck(site, stuck):
    from wagtail_paid_delivery import outbox
    from wagtail_paid_delivery.models import OutboundEmail

    email, _ = outbox.promise(OutboundEmail.Kind.RESEND, to="ada@example.com")
    old = timezone.now() - outbox.STUCK_AFTER - timedelta(minutes=1)
    status = "pending" if stuck == "waiting" else "failed"
    OutboundEmail.objects.filter(pk=email.pk).update(created_at=old, status=status)
    code, out = selftest()
    assert code == 1, out
    assert f"FAIL No email stuck: 1 {stuck}" in out


def test_selftest_without_a_base_url_fails_and_says_how(site, settings):
    settings.WAGTAILADMIN_BASE_URL = ""
    code, out = selftest()
    assert code == 1
    assert "hint: Pass --base-url" in out


def test_selftest_stripe_checks_the_key_and_the_webhook_endpoint(site, fake_stripe):
    code, out = selftest("--stripe")
    assert code == 1
    assert "OK   Stripe answers with the configured key: account acct_fake" in out
    assert "FAIL Stripe sends our events to this site: no enabled endpoint" in out

    url = f"{site.url}/shop/stripe/webhook/"
    fake_stripe.webhook_endpoints.append(
        {
            "id": "we_1",
            "object": "webhook_endpoint",
            "url": url,
            "status": "enabled",
            "enabled_events": ["checkout.session.completed"],
        }
    )
    code, out = selftest("--stripe")
    assert code == 1
    assert f"FAIL Stripe sends our events to this site: {url} lacks: " in out

    fake_stripe.webhook_endpoints[0]["enabled_events"] = sorted(inbox.HANDLED_EVENT_TYPES)
    code, out = selftest("--stripe")
    assert code == 0, out
    assert f"OK   Stripe sends our events to this site: {url} (we_1)" in out


def test_selftest_stripe_reports_a_rejected_key(site, fake_stripe, settings):
    fake_stripe.rejected_keys.add("sk_test_tests")
    code, out = selftest("--stripe")
    assert code == 1
    assert "FAIL Stripe answers with the configured key: StripeKeyRejected" in out


# The admin page ------------------------------------------------------------------------------

SELFTEST_URL = "/admin/paid-delivery/selftest/"


def test_selftest_page_shows_checks_and_queues_a_full_run_for_a_viewer(site, client):
    from tests.test_shop_desk import desk_user

    client.force_login(desk_user("view_purchase"))
    home = client.get("/admin/").content.decode()
    assert SELFTEST_URL in home  # Shop → Delivery self-test
    response = client.get(SELFTEST_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Settings and system checks" in html and "Schedules exist" in html
    assert "No full run yet." in html
    assert "manage.py delivery_selftest" in html

    # The tests' cluster runs tasks at once (sync): the probes ask the live server.
    response = client.post(SELFTEST_URL)
    assert response.status_code == 302
    html = client.get(SELFTEST_URL).content.decode()
    assert "Last full run" in html and "No full run yet." not in html
    assert "Private file not reachable through MEDIA_URL" in html
    assert f"{site.url}/media/selftest/" in html
    assert "FAIL" not in html


def test_selftest_page_shows_a_failing_full_run(site, client, settings):
    from tests.test_shop_desk import desk_user

    settings.ROOT_URLCONF = "tests.urls_private_storage"
    settings.PRIVATE_STORAGE_ROOT = settings.MEDIA_ROOT
    client.force_login(desk_user("view_purchase"))
    client.post(SELFTEST_URL)
    html = client.get(SELFTEST_URL).content.decode()
    assert "FAIL" in html and "with the file&#x27;s bytes" in html
    assert "Product files must live outside MEDIA_ROOT" in html


def test_selftest_page_refuses_editors_without_the_view_permission(site, client):
    from tests.test_shop_desk import assert_refused, desk_user

    client.force_login(desk_user("support_purchase", username="helper"))
    assert SELFTEST_URL not in client.get("/admin/").content.decode()
    assert_refused(client, SELFTEST_URL)
    assert_refused(client, SELFTEST_URL, "post")
    from django_q.models import OrmQ, Task

    assert not Task.objects.exists() and not OrmQ.objects.exists()


def test_selftest_page_is_open_to_superusers(site, admin_client):
    assert admin_client.get(SELFTEST_URL).status_code == 200


def test_selftest_probes_the_nginx_internal_location_when_nginx_serves(site, settings):
    settings.WAGTAIL_PAID_DELIVERY = {**settings.WAGTAIL_PAID_DELIVERY, "SERVE_BACKEND": "nginx"}
    code, out = selftest()
    assert "Private file not reachable through the nginx internal location" in out
    assert f"{site.url}/_paid_files/selftest/" in out
    # Served straight from MEDIA_ROOT under that prefix (what a missing `internal;` does).
    settings.ROOT_URLCONF = "tests.urls_private_storage"
    settings.PRIVATE_STORAGE_ROOT = settings.MEDIA_ROOT
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "NGINX_INTERNAL_PREFIX": "/media/",
    }
    code, out = selftest()
    assert code == 1
    assert "FAIL Private file not reachable through the nginx internal location" in out


def test_the_queued_run_keeps_its_report_where_successful_results_are_not_kept(site, monkeypatch):
    # README's deployment settings keep no successful task results (save_limit -1): the report
    # the self-test page reads is a task result, so its run asks to be kept.
    from django_q.conf import Conf
    from django_q.models import Task

    from wagtail_paid_delivery import selftest as module

    monkeypatch.setattr(Conf, "SAVE_LIMIT", -1)
    module.enqueue()
    run = module.last_run()
    assert run is not None and run.completed
    assert "Schedules exist" in {r.name for r in run.results}
    assert Task.objects.filter(func=module.TASK).count() == 1
