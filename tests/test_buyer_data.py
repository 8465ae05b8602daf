"""A buyer's data at the shop desk, through the admin's URLs: export everything stored about an
address (JSON), erase it (the sales records stay, the person goes, live links die), who may do
either, how addresses are compared; and "view as this buyer", which shows the buyer's screens
and changes nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core import mail
from django.db.models import TextField
from django.db.models.functions import Cast
from django.urls import reverse
from django.utils import timezone
from django_q.models import Task
from wagtail.models import ModelLogEntry

from tests.concurrency import run_at_once
from tests.factories import (
    DownloadEventFactory,
    DownloadLinkFactory,
    ProductPageFactory,
    PurchaseFactory,
    StripeEventFactory,
)
from tests.test_fulfillment import needs_postgres
from tests.test_shop_desk import assert_refused, desk_user, story, url  # noqa: F401
from wagtail_paid_delivery import buyer_data, inbox, links, screens
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadHandoff,
    DownloadLink,
    FileDownloadCount,
    OutboundEmail,
    Purchase,
    StripeEvent,
)
from wagtail_paid_delivery.tasks import process_stripe_event

pytestmark = pytest.mark.django_db

S = Purchase.Status
NS = "wagtail_paid_delivery_admin"


def admin_url(name: str, *args) -> str:
    return reverse(f"{NS}:{name}", args=args)


def export(client, email: str) -> dict:
    response = client.post(admin_url("buyer_export"), {"email": email})
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="buyer-data-')
    assert "@" not in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    return json.loads(response.content)


def everything_as_text() -> str:
    """Every stored row that may hold personal data, as one text to search."""
    parts = []
    for model, fields in (
        (Purchase, ["email", "status_reason"]),
        (OutboundEmail, ["to", "last_error"]),
        (StripeEvent, ["last_error"]),
        (DownloadEvent, ["ip_address", "user_agent"]),
    ):
        for row in model.objects.values_list(*fields):
            parts.extend(str(v) for v in row)
    texts = StripeEvent.objects.annotate(t=Cast("payload", TextField())).values_list("t", flat=True)
    parts.extend(texts)
    for entry in ModelLogEntry.objects.all():
        parts.extend([json.dumps(entry.data), entry.label])
    return "\n".join(parts).lower()


@pytest.fixture
def paid(home):
    product = ProductPageFactory(parent=home, title="Field Guide", files=2, download_limit=3)
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    return purchase, issued


# Who may --------------------------------------------------------------------------------------


def buyer_urls(purchase) -> list[tuple[str, str, dict]]:
    return [
        ("get", admin_url("buyer_data"), {}),
        ("post", admin_url("buyer_data"), {"email": "ada@example.com"}),
        ("get", admin_url("purchase_buyer_data", purchase.pk), {}),
        ("post", admin_url("buyer_export"), {"email": "ada@example.com"}),
        ("get", admin_url("purchase_erase", purchase.pk), {}),
        ("post", admin_url("purchase_erase", purchase.pk), {"confirm_email": "ada@example.com"}),
        (
            "post",
            admin_url("buyer_erase"),
            {"email": "ada@example.com", "confirm_email": "ada@example.com"},
        ),
    ]


def test_without_permission_nothing_is_shown_exported_or_erased(client, paid):
    purchase, _issued = paid
    client.force_login(desk_user(username="writer"))
    for method, path, data in [*buyer_urls(purchase), ("get", url("inspect", purchase.pk), {})]:
        assert_refused(client, path, method, data)
    assert_refused(client, admin_url("view_as", purchase.pk))
    purchase.refresh_from_db()
    assert purchase.email == "ada@example.com" and not ModelLogEntry.objects.exists()


def test_view_permission_views_as_the_buyer_but_cannot_export_or_erase(client, paid):
    purchase, _issued = paid
    client.force_login(desk_user("view_purchase"))
    inspect = client.get(url("inspect", purchase.pk))
    labels = [item["label"] for item in inspect.context["buyer_links"]]
    assert labels == ["View as this buyer"]
    assert client.get(admin_url("view_as", purchase.pk)).status_code == 200
    for method, path, data in buyer_urls(purchase):
        assert_refused(client, path, method, data)
    assert admin_url("buyer_data") not in client.get(reverse("wagtailadmin_home")).content.decode()
    purchase.refresh_from_db()
    assert purchase.email == "ada@example.com"


def test_buyer_data_permission_needs_view_too(client, paid):
    purchase, _issued = paid
    client.force_login(desk_user("manage_buyer_data_purchase"))
    for method, path, data in buyer_urls(purchase):
        assert_refused(client, path, method, data)


def test_buyer_data_permission_exports_and_erases(client, paid):
    purchase, _issued = paid
    client.force_login(desk_user("view_purchase", "manage_buyer_data_purchase"))
    home = client.get(reverse("wagtailadmin_home")).content.decode()
    assert admin_url("buyer_data") in home
    inspect = client.get(url("inspect", purchase.pk))
    labels = [item["label"] for item in inspect.context["buyer_links"]]
    assert labels == ["View as this buyer", "Export or erase the buyer's data"]
    summary = client.get(admin_url("purchase_buyer_data", purchase.pk))
    assert summary.status_code == 200 and summary.context["counts"]["purchases"] == 1
    assert export(client, "ada@example.com")["purchases"][0]["email"] == "ada@example.com"
    response = client.post(
        admin_url("purchase_erase", purchase.pk), {"confirm_email": "ada@example.com"}
    )
    assert response.status_code == 302
    purchase.refresh_from_db()
    assert purchase.email == "" and purchase.erased_at is not None


def test_groups_page_offers_the_buyer_data_permission(admin_client):
    html = admin_client.get(reverse("wagtailusers_groups:add")).content.decode()
    assert "Can export and erase a buyer&#x27;s personal data" in html


# Export ---------------------------------------------------------------------------------------


def test_export_has_everything_stored_about_the_address_and_no_token(admin_client, story):  # noqa: F811
    purchase, token, _guide = story
    data = export(admin_client, "ada@example.com")
    [bought] = data["purchases"]
    assert bought["id"] == str(purchase.public_id) and bought["email"] == "ada@example.com"
    assert bought["amount"] == "12.50" and bought["currency"] == "USD"
    assert bought["stripe_payment_intent_id"] == purchase.stripe_payment_intent_id
    [link] = data["download_links"]
    assert set(link) >= {"id", "expires_at", "downloads_counted", "revoked_at"}
    assert [d["outcome"] for d in data["download_requests"]] == ["served", "expired", "served"]
    assert {d["ip_address"] for d in data["download_requests"]} == {"203.0.113.0"}
    assert data["emails"][0]["to"] == "ada@example.com"
    assert [e["type"] for e in data["stripe_events"]] == [
        "checkout.session.completed",
        "charge.refunded",
    ]
    assert [e["action"] for e in data["log_entries"]] == ["wagtail_paid_delivery.extend_link"]
    assert data["not_included"]
    body = json.dumps(data)
    assert token not in body
    assert DownloadLink.objects.get(purchase=purchase).token_hash not in body
    # Who exported whose data is in the log, without the address.
    entry = ModelLogEntry.objects.get(action=buyer_data.EXPORT)
    assert entry.object_id == str(purchase.pk)
    assert "ada@" not in json.dumps(entry.data) + entry.label


def test_export_of_an_unknown_address_is_empty(admin_client, paid):
    data = export(admin_client, "nobody@example.com")
    assert data["purchases"] == [] and data["stripe_events"] == [] and data["emails"] == []
    assert not ModelLogEntry.objects.exists()


def test_export_refuses_an_invalid_address(admin_client, paid):
    response = admin_client.post(admin_url("buyer_export"), {"email": "not an address"})
    assert response.status_code == 302
    response = admin_client.post(admin_url("buyer_data"), {"email": "not an address"})
    assert response.status_code == 200 and response.context["form"].errors


# How addresses compare ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "stored", "same"),
    [
        ("ADA@EXAMPLE.COM", "ada@example.com", True),
        ("  ada@example.com ", "ada@example.com", True),
        ("ada@BÜCHER.de", "ada@bücher.de", True),
        ("ada@xn--bcher-kva.de", "ada@Bücher.DE", True),
        ("ada@\u212aiosk.example", "ada@kiosk.example", True),  # the same domain to DNS
        ("ada@example.com\u200b", "ada@example.com", True),  # IDNA maps it to nothing
        ("\u212aate@example.com", "kate@example.com", False),  # Kelvin sign: a look-alike
        ("ſam@example.com", "sam@example.com", False),  # long s
        ("ada@example.com", "ada@example.com.evil", False),
        ("", "", False),
    ],
)
def test_address_comparison(typed, stored, same):
    assert buyer_data.same_address(typed, stored) is same


def test_lookup_is_case_insensitive_and_finds_only_that_address(admin_client, home):
    ada = PurchaseFactory(paid=True, email="Ada@Example.com")
    PurchaseFactory(paid=True, email="ada@example.org")
    PurchaseFactory(paid=True, email="bada@example.com")
    response = admin_client.post(admin_url("buyer_data"), {"email": "ADA@EXAMPLE.COM"})
    assert [p.pk for p in response.context["records"].purchases] == [ada.pk]
    assert "Stored about ADA@EXAMPLE.COM" in response.content.decode()


@pytest.mark.parametrize(
    "attack",
    [
        "%@example.com",
        "_da@example.com",
        "ada'--@example.com",
        "'or'1'='1@example.com",
        "ada%@example.com",
        "\u212ada@example.com",
        "ada\u200b@example.com",
    ],
)
def test_wildcards_quotes_and_look_alikes_reach_nobody(admin_client, home, attack):
    PurchaseFactory(paid=True, email="ada@example.com")
    PurchaseFactory(paid=True, email="kda@example.com")
    response = admin_client.post(admin_url("buyer_export"), {"email": attack})
    if response.status_code == 302:  # not an address at all: refused
        return
    data = json.loads(response.content)
    assert data["purchases"] == [] and data["emails"] == []
    erase = admin_client.post(admin_url("buyer_erase"), {"email": attack, "confirm_email": attack})
    assert erase.status_code == 302
    assert set(Purchase.objects.values_list("email", flat=True)) == {
        "ada@example.com",
        "kda@example.com",
    }


def test_unicode_domain_case_variant_is_the_same_buyer(admin_client, home):
    bought = PurchaseFactory(paid=True, email="joerg@bücher.de")
    data = export(admin_client, "JOERG@BÜCHER.DE")
    assert [p["id"] for p in data["purchases"]] == [str(bought.public_id)]


def test_a_non_ascii_local_part_is_compared_exactly(admin_client, home):
    """The lookup form takes what Django's EmailField takes (an ASCII local part); an address
    Stripe gave with another local part is reached from its purchase, and confirmed exactly."""
    bought = PurchaseFactory(paid=True, email="jörg@bücher.de")
    response = admin_client.post(admin_url("buyer_export"), {"email": "JÖRG@BÜCHER.DE"})
    assert response.status_code == 302
    summary = admin_client.get(admin_url("purchase_buyer_data", bought.pk))
    assert summary.context["counts"]["purchases"] == 1
    refused = erase(admin_client, bought, "JÖRG@bücher.de")
    assert refused.status_code == 200 and refused.context["form"].errors
    assert erase(admin_client, bought, "jörg@BÜCHER.DE").status_code == 302
    bought.refresh_from_db()
    assert bought.email == ""


# Erase ----------------------------------------------------------------------------------------


def erase(client, purchase, typed: str):
    return client.post(admin_url("purchase_erase", purchase.pk), {"confirm_email": typed})


def test_erase_then_export_shows_nothing_personal(admin_client, admin_user, story):  # noqa: F811
    purchase, _token, _guide = story
    first = StripeEvent.objects.order_by("pk").first()
    payload = first.payload
    payload["data"]["object"]["customer_details"].update(
        name="Ada Lovelace", address={"line1": "12 St James's Square", "city": "London"}
    )
    StripeEvent.objects.filter(pk=first.pk).update(payload=payload)
    Task.objects.create(
        id="a" * 32,
        name="resend-1",
        func=buyer_data.RESEND_TASK,
        args=("ADA@example.com", None, "r1"),
        started=timezone.now(),
        stopped=timezone.now(),
        success=True,
    )
    before = Purchase.objects.values(
        "amount",
        "currency",
        "amount_refunded",
        "status",
        "product_title",
        "paid_at",
        "created_at",
        "stripe_checkout_session_id",
        "stripe_payment_intent_id",
    ).get(pk=purchase.pk)

    confirm = admin_client.get(admin_url("purchase_erase", purchase.pk))
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "This cannot be undone." in html and 'name="confirm_email"' in html
    response = erase(admin_client, purchase, "ADA@Example.COM")
    assert response.status_code == 302 and response["Location"] == url("inspect", purchase.pk)

    # What accounting keeps stays.
    kept = Purchase.objects.values(*before).get(pk=purchase.pk)
    assert kept == before
    purchase.refresh_from_db()
    assert purchase.email == "" and purchase.user_id is None and purchase.erased_at
    # Nothing personal anywhere.
    text = everything_as_text()
    for personal in ("ada@example.com", "ada lovelace", "st james", "london", "203.0.113"):
        assert personal not in text, personal
    assert set(DownloadEvent.objects.values_list("user_agent", flat=True)) == {""}
    assert not Task.objects.filter(func=buyer_data.RESEND_TASK).exists()
    # Stripe events keep what the inbox and the timeline need: ids, types, amounts.
    kept_payload = StripeEvent.objects.get(pk=first.pk).payload
    assert kept_payload["data"]["object"]["id"] == purchase.stripe_checkout_session_id
    assert kept_payload["data"]["object"]["amount_total"] == 1000
    assert "customer_details" not in kept_payload["data"]["object"]
    # Logged, with the editor and without the address.
    entry = ModelLogEntry.objects.get(action=buyer_data.ERASE)
    assert entry.user == admin_user and entry.object_id == str(purchase.pk)
    assert entry.data["links_revoked"] == 1
    inspect = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert "Buyer&#x27;s data erased" in inspect and "buyer data erased" in inspect
    # And the export finds nothing about the address any more.
    data = export(admin_client, "ada@example.com")
    assert data["purchases"] == [] and data["emails"] == [] and data["stripe_events"] == []
    assert data["resend_requests"] == []


def test_stripe_does_not_put_an_erased_address_back(admin_client, story, fake_stripe):  # noqa: F811
    purchase, _token, _guide = story
    erase(admin_client, purchase, "ada@example.com")
    failed = StripeEvent.objects.get(status=StripeEvent.Status.FAILED)
    inbox.reset(failed.pk)
    process_stripe_event(failed.pk)  # the refund event, retried now that Stripe answers
    failed.refresh_from_db()
    assert failed.status == StripeEvent.Status.PROCESSED, failed.last_error
    purchase.refresh_from_db()
    assert purchase.email == "" and purchase.amount_refunded == 500


def test_erase_kills_a_live_link(client, admin_client, paid):
    purchase, issued = paid
    page = reverse("wagtail_paid_delivery:download", args=[issued.token])
    assert client.get(page).status_code == 200
    assert erase(admin_client, purchase, "ada@example.com").status_code == 302
    refused = client.get(page)
    assert refused.status_code == 410
    assert DownloadLink.objects.get(pk=issued.link.pk).revoked_at is not None
    purchase.refresh_from_db()
    assert purchase.status == S.PAID  # a sale stays a sale


def test_erase_with_the_wrong_address_changes_nothing(admin_client, paid):
    purchase, issued = paid
    response = erase(admin_client, purchase, "eve@example.com")
    assert response.status_code == 200
    assert response.context["form"].errors["confirm_email"]
    purchase.refresh_from_db()
    assert purchase.email == "ada@example.com"
    assert DownloadLink.objects.get(pk=issued.link.pk).revoked_at is None
    assert not ModelLogEntry.objects.exists()


def test_erase_cancels_an_email_still_waiting(admin_client, paid, settings):
    purchase, _issued = paid
    waiting = OutboundEmail.objects.create(
        kind=OutboundEmail.Kind.RESEND,
        to="ada@example.com",
        message_id="<1@test>",
        last_error="550 ada@example.com: mailbox full",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    erase(admin_client, purchase, "ada@example.com")
    waiting.refresh_from_db()
    assert waiting.status == OutboundEmail.Status.CANCELLED and waiting.to == ""
    assert waiting.last_error == "550 [erased]: mailbox full"
    assert mail.outbox == []


def test_erase_by_address_reaches_events_of_no_purchase(admin_client, admin_user, home):
    other = StripeEventFactory(
        status=StripeEvent.Status.IGNORED,
        payload={
            "id": "evt_other",
            "type": "customer.created",
            "data": {"object": {"id": "cus_1", "email": "Ada@Example.com", "name": "Ada L."}},
        },
    )
    untouched = StripeEventFactory(
        payload={"id": "evt_x", "data": {"object": {"email": "eve@example.com"}}}
    )
    lookup = admin_client.post(admin_url("buyer_data"), {"email": "ada@example.com"})
    assert lookup.context["counts"]["stripe_events"] == 1
    confirm = admin_client.post(admin_url("buyer_erase"), {"email": "ada@example.com"})
    assert confirm.status_code == 200 and "This cannot be undone." in confirm.content.decode()
    done = admin_client.post(
        admin_url("buyer_erase"),
        {"email": "ada@example.com", "confirm_email": "ada@example.com"},
    )
    assert done.status_code == 302 and done["Location"] == admin_url("buyer_data")
    other.refresh_from_db()
    assert other.payload == {
        "id": "evt_other",
        "type": "customer.created",
        "data": {"object": {"id": "cus_1"}},
    }
    untouched.refresh_from_db()
    assert untouched.payload["data"]["object"]["email"] == "eve@example.com"
    entry = ModelLogEntry.objects.get(action=buyer_data.ERASE)
    assert entry.object_id == str(other.pk) and entry.user == admin_user


def test_erase_of_an_address_with_nothing_stored_says_so(admin_client, home):
    response = admin_client.post(
        admin_url("buyer_erase"), {"email": "x@example.com", "confirm_email": "x@example.com"}
    )
    assert response.status_code == 302
    assert not ModelLogEntry.objects.exists()


# View as this buyer -----------------------------------------------------------------------------


def snapshot() -> dict[str, list]:
    return {
        model.__name__: sorted(map(str, model.objects.values_list()))
        for model in (
            Purchase,
            DownloadLink,
            FileDownloadCount,
            DownloadEvent,
            DownloadHandoff,
            OutboundEmail,
            StripeEvent,
            ModelLogEntry,
        )
    }


def test_view_as_shows_the_buyers_screens_and_changes_nothing(admin_client, paid):
    purchase, issued = paid
    first, second = purchase.product_page.product_files
    FileDownloadCount.objects.create(link=issued.link, file_id=first.pk, count=2)
    DownloadLink.objects.filter(pk=issued.link.pk).update(download_count=2)
    before = snapshot()
    response = admin_client.get(admin_url("view_as", purchase.pk))
    assert response.status_code == 200
    assert snapshot() == before  # no link issued, no count, no email, no log entry
    assert mail.outbox == []
    keys = [s.key for s in response.context["screens"]]
    assert keys == ["success", f"link-{issued.link.pk}", "email"]
    success, page, email = response.context["screens"]
    # The success page would show its link (made on the buyer's next visit), never a real one.
    assert "Go to your downloads" in success.html
    assert "would make its download link" in success.note
    for raw in links.success_page_tokens(purchase):
        assert raw not in response.content.decode()
    assert issued.token not in response.content.decode()
    # The download page: the real files and what is left, with a token that opens nothing.
    assert first.title in page.html and second.title in page.html
    assert "1 download left" in page.html and "3 downloads left" in page.html
    assert screens.SAMPLE_TOKEN in page.html
    assert email.to == "ada@example.com" and "Field Guide" in email.subject
    assert screens.SAMPLE_TOKEN in email.html
    html = response.content.decode()
    assert 'sandbox=""' in html and "srcdoc=" in html
    assert "no-store" in response["Cache-Control"]


def test_view_as_shows_why_links_are_refused(admin_client, paid):
    purchase, issued = paid
    expired = DownloadLinkFactory(purchase=purchase, expires_at=timezone.now() - timedelta(1))
    before = snapshot()
    response = admin_client.get(admin_url("view_as", purchase.pk))
    by_key = {s.key: s for s in response.context["screens"]}
    assert by_key[f"link-{expired.pk}"].note == "Refused page"
    assert "expired" in by_key[f"link-{expired.pk}"].html.lower()
    assert by_key[f"link-{issued.link.pk}"].note == "Download page"
    Purchase.objects.filter(pk=purchase.pk).update(status=S.REVOKED, revoked_at=timezone.now())
    before = snapshot()
    response = admin_client.get(admin_url("view_as", purchase.pk))
    assert snapshot() == before
    by_key = {s.key: s for s in response.context["screens"]}
    # A revoked purchase's success page has its own words (no link, and says why).
    assert "Access to this purchase was withdrawn" in by_key["success"].html
    assert "Go to your downloads" not in by_key["success"].html
    assert all(s.note == "Refused page" for k, s in by_key.items() if k.startswith("link-"))
    assert by_key["email"].note == "Sent only for paid purchases."


def test_view_as_uses_an_existing_success_link_without_showing_it(admin_client, paid):
    purchase, _issued = paid
    made = links.success_page_link(purchase)
    DownloadLink.objects.filter(pk=made.link.pk).update(revoked_at=timezone.now())
    response = admin_client.get(admin_url("view_as", purchase.pk))
    success = response.context["screens"][0]
    assert "Go to your downloads" not in success.html
    assert "shows no link" in success.note
    assert made.token not in response.content.decode()


def test_view_as_escapes_the_buyers_text(admin_client, home):
    product = ProductPageFactory(parent=home, title='<script>alert("t")</script>')
    purchase = PurchaseFactory(paid=True, product=product, email="a@example.com")
    DownloadEventFactory(link=DownloadLinkFactory(purchase=purchase))
    html = admin_client.get(admin_url("view_as", purchase.pk)).content.decode()
    assert '<script>alert("t")' not in html
    # Each screen is an attribute's text: its markup never becomes the admin page's.
    assert html.count("<!DOCTYPE") == 0 and html.count('srcdoc="&lt;') == 3
    assert "&amp;lt;script&amp;gt;" in html


def test_export_and_erase_need_a_csrf_token(paid, admin_user):
    from django.test import Client

    purchase, _issued = paid
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(admin_url("buyer_export"), {"email": "ada@example.com"}).status_code == 403
    response = client.post(
        admin_url("purchase_erase", purchase.pk), {"confirm_email": "ada@example.com"}
    )
    assert response.status_code == 403
    purchase.refresh_from_db()
    assert purchase.email == "ada@example.com" and not ModelLogEntry.objects.exists()


def test_view_as_shows_the_newest_links_only(admin_client, paid):
    purchase, _issued = paid
    for _ in range(screens.VIEW_AS_LINKS + 2):
        DownloadLinkFactory(purchase=purchase)
    response = admin_client.get(admin_url("view_as", purchase.pk))
    keys = [s.key for s in response.context["screens"]]
    assert len([k for k in keys if k.startswith("link-")]) == screens.VIEW_AS_LINKS
    newest = DownloadLink.objects.filter(purchase=purchase).order_by("-created_at", "-pk")[0]
    assert keys[1] == f"link-{newest.pk}"


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_erasures_at_once_erase_once(paid, admin_user):
    """A double submit: the second waits for the first's row locks, then finds nothing left."""
    results = run_at_once(
        [
            lambda: buyer_data.erase("ada@example.com", user=admin_user),
            lambda: buyer_data.erase("ADA@example.com", user=admin_user),
        ]
    )
    assert sorted(r.purchases for r in results) == [0, 1]
    assert ModelLogEntry.objects.filter(action=buyer_data.ERASE).count() == 1
