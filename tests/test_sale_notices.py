"""New sale notices: the addresses NEW_SALE_EMAILS names and the staff who opt in on their
Wagtail account page are told about each sale, once, through the email outbox; never with a
buyer's token, never for a grant, never to whoever may no longer view purchases."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.core.checks import run_checks
from django.urls import reverse
from django.utils import timezone

from tests.concurrency import run_at_once
from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.mail_backends import DownBackend
from tests.settings import WAGTAIL_PAID_DELIVERY as SETTINGS
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import needs_postgres
from wagtail_paid_delivery import fulfillment, sale_notices, tasks, timeline
from wagtail_paid_delivery.models import OutboundEmail, Purchase, ShopNotificationPreference

pytestmark = pytest.mark.django_db

NEW_SALE = OutboundEmail.Kind.NEW_SALE
TOKEN_PATH = re.compile(r"/shop/d/")
ACCOUNT_PANEL = "paid_delivery_notifications"


@pytest.fixture(autouse=True)
def _fresh_backend():
    DownBackend.handed = []


@pytest.fixture
def owners(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **SETTINGS,
        "NEW_SALE_EMAILS": ["owner@example.com", "Books@Example.com"],
    }


@pytest.fixture
def purchase(home):
    return PurchaseFactory(
        product=ProductPageFactory(parent=home, title="Field Guide", price_amount=1250)
    )


def pay(client, fake_stripe, purchase, capture, *, livemode=False, **paid):
    """The buyer pays and Stripe's webhook arrives (its task and on-commit work run)."""
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.sessions[session_id]["livemode"] = livemode
    fake_stripe.pay(session_id, email="ada@example.com", **paid)
    with capture(execute=True):
        response = post_event(client, event_for(fake_stripe.session(session_id)))
    assert response.status_code == 200
    purchase.refresh_from_db()
    assert purchase.status == Purchase.Status.PAID
    return session_id


def notices() -> list:
    """The new sale notices that reached the mail server, by recipient."""
    return sorted(
        (m for m in mail.outbox if m.subject.removeprefix("[TEST] ").startswith("New sale")),
        key=lambda m: m.to[0],
    )


def viewer(username: str, *, opted_in: bool | None = True, via_group: bool = True, **fields):
    """An admin user who may view purchases (through a group, or given directly)."""
    view = Permission.objects.get(
        content_type__app_label="wagtail_paid_delivery", codename="view_purchase"
    )
    admin = Permission.objects.get(content_type__app_label="wagtailadmin", codename="access_admin")
    # The account page requires a name.
    fields = {"first_name": username.title(), "last_name": "Example", **fields}
    user = UserFactory(username=username, is_staff=False, **fields)
    if via_group:
        group = Group.objects.create(name=f"{username} group")
        group.permissions.add(admin, view)
        user.groups.add(group)
    else:
        user.user_permissions.add(admin, view)
    if opted_in is not None:
        ShopNotificationPreference.objects.create(user=user, email_new_sales=opted_in)
    return user


# The setting -----------------------------------------------------------------------------------


def test_a_sale_is_told_to_the_settings_addresses_once_with_what_was_paid_and_no_token(
    client, fake_stripe, purchase, owners, django_capture_on_commit_callbacks
):
    session_id = pay(
        client, fake_stripe, purchase, django_capture_on_commit_callbacks, amount_discount=250
    )

    delivery = [m for m in mail.outbox if m.to == ["ada@example.com"]]
    assert len(delivery) == 1
    told = notices()
    assert [m.to for m in told] == [["Books@Example.com"], ["owner@example.com"]]
    for message in told:
        assert message.subject == "[TEST] New sale: Field Guide, $10.00"
        body = message.body
        assert "Product: Field Guide" in body
        # As the buyer paid it (a promotion code took 2.50 off), with the currency.
        assert "Amount paid: $10.00 (USD); the product's price was $12.50" in body
        assert "Buyer: ada@example.com" in body
        assert "Mode: TEST" in body and "no real money" in body
        inspect = f"http://testserver/admin/shop/purchases/{purchase.pk}/"
        assert inspect in body
        # The shop's email carries nothing that opens the buyer's files.
        assert not TOKEN_PATH.search(body) and not message.alternatives
        assert "/shop/h/" not in body and "token" not in body.lower()
    # The link opens the purchase's inspect view for whoever may view purchases.
    client.force_login(UserFactory(username="boss", is_superuser=True))
    inspect_page = client.get(inspect.removeprefix("http://testserver"))
    assert inspect_page.status_code == 200 and "ada@example.com" in inspect_page.content.decode()

    # The inspect view's timeline shows them, as it shows the buyer's email.
    titles = [e.title for e in timeline.build_timeline(purchase) if e.kind == "email"]
    assert titles.count("New sale notice to the shop sent") == 2

    # Fulfilment again (the success page, a retried event, reconciliation): nothing more.
    assert fulfillment.fulfill_checkout(session_id).outcome == "already_paid"
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200
        client.get(f"/shop/thanks/?session_id={session_id}")
    assert OutboundEmail.objects.filter(kind=NEW_SALE).count() == 2
    assert len(notices()) == 2


def test_a_live_sale_is_not_marked_test(
    client, fake_stripe, purchase, owners, django_capture_on_commit_callbacks
):
    pay(client, fake_stripe, purchase, django_capture_on_commit_callbacks, livemode=True)
    message = notices()[0]
    assert message.subject == "New sale: Field Guide, $12.50"
    assert "Mode: live" in message.body and "TEST" not in message.body


def test_no_setting_and_nobody_opted_in_sends_no_notice(
    client, fake_stripe, purchase, admin_user, django_capture_on_commit_callbacks
):
    pay(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    assert notices() == [] and not OutboundEmail.objects.filter(kind=NEW_SALE).exists()
    assert [m.to for m in mail.outbox] == [["ada@example.com"]]


def test_a_grant_is_not_a_sale(admin_client, home, owners, django_capture_on_commit_callbacks):
    product = ProductPageFactory(parent=home, title="Field Guide")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("wagtail_paid_delivery_purchases:grant"),
            {"product": product.pk, "email": "press@example.com", "reason": "Review copy"},
        )
    assert response.status_code == 302
    assert Purchase.objects.get().source == Purchase.Source.GRANT
    assert [m.to for m in mail.outbox] == [["press@example.com"]]
    assert not OutboundEmail.objects.filter(kind=NEW_SALE).exists()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("owner@example.com", "must be a list of email addresses"),
        (["owner@example.com", "not an address"], "invalid addresses: 'not an address'"),
        (["owner@example.com", None], "invalid addresses: None"),
    ],
)
def test_a_bad_setting_is_system_check_e043(settings, value, problem):
    settings.WAGTAIL_PAID_DELIVERY = {**SETTINGS, "NEW_SALE_EMAILS": value}
    found = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E043"]
    assert len(found) == 1 and problem in found[0].msg


def test_good_settings_pass_the_check(settings, owners):
    assert not [m for m in run_checks() if m.id == "wagtail_paid_delivery.E043"]


# Staff who opt in ------------------------------------------------------------------------------


def account_form(response, **changes) -> dict[str, str]:
    """The account page's form as the browser would post it, with ``changes``."""
    data: dict[str, str] = {}
    for panels in response.context["panels_by_tab"].values():
        for panel in panels:
            for field in panel.get_form():
                value = field.value()
                if value is True:
                    data[field.html_name] = "on"
                elif value not in (None, False):
                    data[field.html_name] = str(value)
    for name, value in changes.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return data


def test_staff_opt_in_on_their_account_page_and_are_told_while_they_may_view_purchases(
    client, fake_stripe, home, django_capture_on_commit_callbacks
):
    clerk = viewer("clerk", opted_in=None)
    client.force_login(clerk)
    page = client.get(reverse("wagtailadmin_account"))
    html = page.content.decode()
    assert "Email me about new sales" in html and f'id="{ACCOUNT_PANEL}-section"' in html
    box = f"{ACCOUNT_PANEL}-email_new_sales"
    response = client.post(reverse("wagtailadmin_account"), account_form(page, **{box: "on"}))
    assert response.status_code == 302
    assert ShopNotificationPreference.objects.get(user=clerk).email_new_sales is True

    direct = viewer("direct", via_group=False)  # the permission given to the user, no group
    boss = UserFactory(username="boss", is_superuser=True)
    ShopNotificationPreference.objects.create(user=boss, email_new_sales=True)
    viewer("quiet", opted_in=False)
    viewer("gone", is_active=False)  # a deactivated account
    editor = UserFactory(username="editor")  # opted in once, may not view purchases
    ShopNotificationPreference.objects.create(user=editor, email_new_sales=True)

    first = PurchaseFactory(product=ProductPageFactory(parent=home, title="Atlas"))
    pay(client, fake_stripe, first, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[boss.email], [clerk.email], [direct.email]]

    # The clerk's group loses the permission: the next sale is not told to them.
    clerk.groups.get().permissions.remove(
        Permission.objects.get(
            codename="view_purchase", content_type__app_label="wagtail_paid_delivery"
        )
    )
    mail.outbox.clear()
    second = PurchaseFactory(product=ProductPageFactory(parent=home, title="Globe"))
    pay(client, fake_stripe, second, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[boss.email], [direct.email]]

    # The direct viewer opts out on the account page.
    client.force_login(direct)
    page = client.get(reverse("wagtailadmin_account"))
    assert (
        client.post(reverse("wagtailadmin_account"), account_form(page, **{box: None})).status_code
        == 302
    )
    assert ShopNotificationPreference.objects.get(user=direct).email_new_sales is False


def test_the_account_panel_is_only_for_staff_who_may_view_purchases(client):
    editor = UserFactory(username="editor", first_name="Ed", last_name="Itor")
    editor.user_permissions.add(
        Permission.objects.get(content_type__app_label="wagtailadmin", codename="access_admin")
    )
    client.force_login(editor)
    page = client.get(reverse("wagtailadmin_account"))
    assert page.status_code == 200
    assert "Email me about new sales" not in page.content.decode()
    # Posting the field anyway stores nothing.
    data = account_form(page, **{f"{ACCOUNT_PANEL}-email_new_sales": "on"})
    assert client.post(reverse("wagtailadmin_account"), data).status_code == 302
    assert not ShopNotificationPreference.objects.exists()


def test_a_notice_waiting_for_a_retry_is_cancelled_when_its_reader_loses_the_permission(
    client, fake_stripe, purchase, settings, django_capture_on_commit_callbacks
):
    clerk = viewer("clerk")
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    pay(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    notice = OutboundEmail.objects.get(kind=NEW_SALE)
    assert (notice.to, notice.status, notice.attempts) == (clerk.email, "pending", 1)

    clerk.is_active = False
    clerk.save()
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    tasks.sweep_emails()
    notice.refresh_from_db()
    assert notice.status == OutboundEmail.Status.CANCELLED
    assert notice.last_error == "the address is no longer told about new sales"
    assert notices() == []


def test_staff_are_read_once_a_minute_for_promises_and_afresh_at_each_attempt(
    client, fake_stripe, home, monkeypatch, django_capture_on_commit_callbacks
):
    clerk = viewer("clerk")
    late = viewer("late", opted_in=False)
    first = PurchaseFactory(product=ProductPageFactory(parent=home, title="Atlas"))
    pay(client, fake_stripe, first, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[clerk.email]]

    # Changed by another process (a queryset update: no signal reaches this one). The new
    # opt-in waits for the minute; the opt-out is seen at the attempt, which cancels the notice
    # promised meanwhile.
    ShopNotificationPreference.objects.filter(user=late).update(email_new_sales=True)
    ShopNotificationPreference.objects.filter(user=clerk).update(email_new_sales=False)
    mail.outbox.clear()
    second = PurchaseFactory(product=first.product)
    pay(client, fake_stripe, second, django_capture_on_commit_callbacks)
    assert notices() == []
    cancelled = OutboundEmail.objects.get(kind=NEW_SALE, purchase=second)
    assert (cancelled.to, cancelled.status) == (clerk.email, OutboundEmail.Status.CANCELLED)
    assert not OutboundEmail.objects.filter(kind=NEW_SALE, to=late.email).exists()

    # Once the minute is over, the staff are read again.
    monkeypatch.setattr(sale_notices, "STAFF_CACHE_SECONDS", 0)
    third = PurchaseFactory(product=first.product)
    pay(client, fake_stripe, third, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[late.email]]


def test_a_change_in_this_process_is_seen_at_the_next_promise(
    client, fake_stripe, home, django_capture_on_commit_callbacks
):
    clerk = viewer("clerk")
    first = PurchaseFactory(product=ProductPageFactory(parent=home, title="Atlas"))
    pay(client, fake_stripe, first, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[clerk.email]]

    boss = UserFactory(username="boss", is_superuser=True)  # saved here: the list is forgotten
    ShopNotificationPreference.objects.create(user=boss, email_new_sales=True)
    clerk.groups.get().permissions.clear()
    mail.outbox.clear()
    second = PurchaseFactory(product=first.product)
    pay(client, fake_stripe, second, django_capture_on_commit_callbacks)
    assert [m.to for m in notices()] == [[boss.email]]
    assert not OutboundEmail.objects.filter(kind=NEW_SALE, purchase=second, to=clerk.email)


# Durable, like every email ---------------------------------------------------------------------


def test_a_notice_the_mail_server_refused_is_retried_by_the_sweep_and_sent_once(
    client, fake_stripe, purchase, owners, settings, django_capture_on_commit_callbacks
):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    pay(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    waiting = OutboundEmail.objects.filter(kind=NEW_SALE)
    assert waiting.count() == 2
    assert all(e.status == "pending" and e.attempts == 1 for e in waiting)
    assert all("SMTPServerDisconnected" in e.last_error for e in waiting)
    handed = [m for m in DownBackend.handed if m.subject.startswith("[TEST] New sale")]
    assert len(handed) == 2

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert tasks.sweep_emails().startswith("queued 3")  # the delivery email and two notices
    waiting = OutboundEmail.objects.filter(kind=NEW_SALE)
    assert {(e.status, e.attempts) for e in waiting} == {("sent", 2)}
    assert len(notices()) == 2
    # The same Message-ID at every attempt, so a mail client shows one.
    ids = {e.to: e.message_id for e in waiting}
    for message in [*handed, *notices()]:
        assert message.message()["Message-ID"] == ids[message.to[0]]
    assert tasks.sweep_emails().startswith("queued 0")


def test_the_buyers_address_corrected_leaves_the_shops_notice_alone(
    client, fake_stripe, purchase, settings, django_capture_on_commit_callbacks
):
    settings.WAGTAIL_PAID_DELIVERY = {**SETTINGS, "NEW_SALE_EMAILS": ["ada@example.com"]}
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    pay(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    from wagtail_paid_delivery import outbox

    purchase.email = "ada@new.example.com"
    purchase.save()
    outbox.address_corrected(purchase, "ada@example.com")
    assert OutboundEmail.objects.get(kind=NEW_SALE).to == "ada@example.com"
    assert OutboundEmail.objects.get(kind="delivery").to == "ada@new.example.com"


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_fulfilment_at_once_from_many_workers_tells_each_recipient_once(home, fake_stripe, owners):
    purchase = PurchaseFactory(product=ProductPageFactory(parent=home, title="Atlas"))
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id)
    results = run_at_once([lambda: fulfillment.fulfill_checkout(session_id)] * 6)
    assert sorted(r.outcome for r in results) == ["already_paid"] * 5 + ["fulfilled"]
    assert OutboundEmail.objects.filter(kind=NEW_SALE).count() == 2
    assert [m.to for m in notices()] == [["Books@Example.com"], ["owner@example.com"]]
