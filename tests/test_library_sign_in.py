"""library/ without a password: an emailed one-time sign-in link opens a library session.

Through the real URLs, with the outbox's real email (the task runs in sync mode), and the
attacks on it: replay, expiry, a mail scanner's GET, another address's session, a tampered
session, brute force, enumeration, CSRF.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core import mail, signing
from django.core.cache import cache
from django.test import Client, override_settings
from django.utils import timezone

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory
from tests.mail_backends import DownBackend
from wagtail_paid_delivery import library, links, log_filters
from wagtail_paid_delivery.models import DownloadLink, LibrarySignIn, OutboundEmail, Purchase
from wagtail_paid_delivery.tasks import sweep_emails

pytestmark = pytest.mark.django_db

URL = "/shop/library/"
SIGN_IN_RE = re.compile(r"http://testserver(/shop/library/d/([A-Za-z0-9_-]{43})/)")


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def shop(home):
    guide = ProductPageFactory(parent=home, title="Field guide", files=2)
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    owner = UserFactory(username="owner")
    p = {
        "guide": PurchaseFactory(paid=True, product=guide, email="Guest@Example.com"),
        # On someone's account, but bought with this address: the mailbox proves it too.
        "on_account": PurchaseFactory(
            paid=True, product=atlas, email="guest@example.com", user=owner
        ),
        "refunded": PurchaseFactory(paid=True, product=atlas, email="guest@example.com"),
        "pending": PurchaseFactory(product=guide, email="guest@example.com"),
        "stranger": PurchaseFactory(paid=True, product=guide, email="stranger@example.com"),
    }
    Purchase.objects.filter(pk=p["refunded"].pk).update(status=Purchase.Status.REFUNDED)
    return p


def body(response, email=""):
    """The page's text with what differs on every response (the CSP nonce) left out."""
    text = re.sub(r'nonce="[^"]*"', "", response.content.decode())
    return text.replace(email, "ADDRESS") if email else text


def ask(client, email="GUEST@example.com", **extra):
    return client.post(URL, {"email": email}, **extra)


def sign_in_path(message=None):
    message = message or mail.outbox[-1]
    path, token = SIGN_IN_RE.search(message.body).groups()
    return path, token


def signed_in_client(email="guest@example.com"):
    client = Client()
    ask(client, email)
    path, _ = sign_in_path()
    assert client.post(path).status_code == 303
    return client


def test_a_buyer_gets_a_one_time_link_by_email_kept_only_as_its_hash(client, shop):
    response = ask(client)
    assert response.status_code == 200
    assert "Check your email" in response.content.decode()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    # The address on record (the newest purchase's spelling), not the one typed.
    assert message.to == ["guest@example.com"]
    assert message.subject == "Sign in to your downloads"
    html = message.alternatives[0][0]
    path, token = sign_in_path(message)
    assert token in html and "20 minutes" in message.body
    row = LibrarySignIn.objects.get()
    assert row.token_hash == links.hash_token(token) and row.used_at is None
    assert row.expires_at - row.created_at == timedelta(minutes=20)
    email = OutboundEmail.objects.get()
    assert (email.kind, email.status) == ("library_sign_in", "sent")
    assert email.idempotency_key.startswith("library:")
    # Listed on the purchases it opens: the desk's timeline of each shows it.
    assert set(email.purchases.values_list("pk", flat=True)) == {
        shop[name].pk for name in ("guide", "on_account", "refunded")
    }
    # The raw token is stored nowhere.
    for model in (LibrarySignIn, OutboundEmail):
        for values in model.objects.values():
            assert token not in repr(values)


def test_known_and_unknown_addresses_get_the_same_answer(shop):
    answers = []
    for email in ("guest@example.com", "nobody@example.com"):
        response = ask(Client(), email)
        answers.append(
            (
                response.status_code,
                body(response, email),
                sorted(
                    (k, v)
                    for k, v in response.items()
                    if k not in ("Content-Security-Policy", "Content-Length")
                ),
            )
        )
    assert answers[0] == answers[1]
    # Only the buyer was written to; the stranger's address left no trace.
    assert [m.to for m in mail.outbox] == [["guest@example.com"]]
    assert list(OutboundEmail.objects.values_list("to", flat=True)) == ["guest@example.com"]
    assert LibrarySignIn.objects.count() == 1


def test_the_links_get_changes_nothing_as_a_mail_scanner_opens_it(client, shop):
    ask(client)
    path, _ = sign_in_path()
    scanner = Client()
    for _ in range(3):
        response = scanner.get(path)
        assert response.status_code == 200
        html = response.content.decode()
        assert "Open my downloads" in html and 'method="post"' in html
        assert "guest@example.com" in html
        assert scanner.head(path).status_code == 200
    assert LibrarySignIn.objects.get().used_at is None
    assert library.SESSION_KEY not in scanner.session
    # The buyer's press still works after the scanner's visits.
    assert client.post(path).status_code == 303


def test_the_link_opens_every_purchase_of_that_address_and_nothing_else(client, shop):
    ask(client)
    path, _ = sign_in_path()
    response = client.post(path)
    assert response.status_code == 303 and response["Location"] == URL
    page = client.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Signed in with guest@example.com" in html and "Sign out" in html
    for name in ("guide", "on_account"):
        assert f"/shop/library/{shop[name].public_id}/" in html
    # Refunded: listed honestly without a button; pending and a stranger's: not at all.
    assert "Refunded: no longer available to download." in html
    for name in ("refunded", "pending", "stranger"):
        assert f"/shop/library/{shop[name].public_id}/" not in html
    assert html.count("Get download link") == 2
    assert not DownloadLink.objects.exists()
    # The button issues a working link.
    pressed = client.post(f"/shop/library/{shop['guide'].public_id}/")
    assert pressed.status_code == 303
    link = DownloadLink.objects.get()
    assert (link.reason, link.purchase_id) == ("library", shop["guide"].pk)
    assert client.get(pressed["Location"]).status_code == 200
    # A purchase without a button gets no link by posting anyway.
    for name in ("refunded", "pending", "stranger"):
        assert client.post(f"/shop/library/{shop[name].public_id}/").status_code == 404
    assert DownloadLink.objects.count() == 1


def test_a_used_link_cannot_be_replayed_from_any_browser(client, shop):
    ask(client)
    path, _ = sign_in_path()
    assert client.post(path).status_code == 303
    for replay in (client, Client()):
        response = replay.post(path)
        assert response.status_code == 410
        assert "This sign-in link no longer works" in response.content.decode()
        assert replay.get(path).status_code == 410
    other = Client()
    other.post(path)
    assert "Field guide" not in other.get(URL).content.decode()


def test_an_expired_link_opens_nothing(client, shop):
    ask(client)
    path, _ = sign_in_path()
    LibrarySignIn.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(path).status_code == 410
    assert client.post(path).status_code == 410
    assert LibrarySignIn.objects.get().used_at is None
    assert "Field guide" not in client.get(URL).content.decode()


@override_settings(WAGTAIL_PAID_DELIVERY={"LIBRARY_SIGN_IN_LIFETIME": 300})
def test_the_link_lifetime_is_a_setting(client, shop):
    ask(client)
    row = LibrarySignIn.objects.get()
    assert row.expires_at - row.created_at == timedelta(minutes=5)
    assert "5 minutes" in mail.outbox[0].body


def test_a_session_for_one_address_reaches_no_other_addresses_purchases(shop):
    browser = signed_in_client("stranger@example.com")
    html = browser.get(URL).content.decode()
    assert f"/shop/library/{shop['stranger'].public_id}/" in html
    assert f"/shop/library/{shop['guide'].public_id}/" not in html
    assert browser.post(f"/shop/library/{shop['guide'].public_id}/").status_code == 404
    assert not DownloadLink.objects.exists()
    # Using the guest's link in that browser replaces the session: one address at a time.
    ask(Client(), "guest@example.com")
    path, _ = sign_in_path()
    assert browser.post(path).status_code == 303
    html = browser.get(URL).content.decode()
    assert f"/shop/library/{shop['guide'].public_id}/" in html
    assert f"/shop/library/{shop['stranger'].public_id}/" not in html


def test_a_tampered_or_foreign_session_value_opens_nothing(shop):
    browser = signed_in_client()
    session = browser.session
    good = session[library.SESSION_KEY]
    expired = signing.dumps({"e": "guest@example.com", "x": 1}, salt=library.SESSION_SALT)
    forged = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # signature changed
        signing.dumps({"e": "guest@example.com", "x": 2**40}),  # another salt
        signing.dumps({"e": "guest@example.com", "x": 2**40}, salt="something.else"),
        expired,
        "guest@example.com",
        {"e": "guest@example.com"},
    ]
    for value in forged:
        session[library.SESSION_KEY] = value
        session.save()
        response = browser.get(URL)
        assert "Email me a sign-in link" in response.content.decode()
        assert browser.post(f"/shop/library/{shop['guide'].public_id}/").status_code == 404
    # A tampered session cookie is an unknown session: nothing opens.
    cookie = django_settings.SESSION_COOKIE_NAME
    browser.cookies[cookie] = browser.cookies[cookie].value[:-2] + "zz"
    assert "Email me a sign-in link" in browser.get(URL).content.decode()
    assert not DownloadLink.objects.exists()


def test_the_library_session_ends_after_its_lifetime(shop):
    browser = signed_in_client()
    with override_settings(WAGTAIL_PAID_DELIVERY={"LIBRARY_SESSION_LIFETIME": 0}):
        assert "Email me a sign-in link" in browser.get(URL).content.decode()


def test_the_library_session_opens_nothing_else(shop):
    browser = signed_in_client()
    assert "_auth_user_id" not in browser.session
    assert browser.get("/admin/").status_code == 302  # still a stranger to the site


def test_signing_out_closes_the_library(shop):
    browser = signed_in_client()
    response = browser.post("/shop/library/sign-out/")
    assert response.status_code == 303 and response["Location"] == URL
    assert library.SESSION_KEY not in browser.session
    assert "Email me a sign-in link" in browser.get(URL).content.decode()
    assert browser.post(f"/shop/library/{shop['guide'].public_id}/").status_code == 404
    assert browser.get("/shop/library/sign-out/").status_code == 405


def test_the_session_key_changes_on_sign_in(client, shop):
    client.get(URL)
    client.session.save()
    before = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    ask(client)
    path, _ = sign_in_path()
    client.post(path)
    assert client.cookies[django_settings.SESSION_COOKIE_NAME].value != before


@override_settings(WAGTAIL_PAID_DELIVERY={"LIBRARY_RATE_LIMIT": (3, 3600)})
def test_brute_forcing_sign_in_links_hits_the_rate_limit(client, shop):
    made_up = ["/shop/library/d/" + c * 43 + "/" for c in "ABC"]
    assert [client.post(path).status_code for path in made_up] == [410, 410, 410]
    response = client.post("/shop/library/d/" + "D" * 43 + "/")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert "Too many requests" in response.content.decode()
    # The email form counts for the same client too.
    limited = ask(client)
    assert limited.status_code == 429 and not mail.outbox
    # Another client is not held back.
    assert ask(Client(REMOTE_ADDR="192.0.2.9")).status_code == 200


@override_settings(WAGTAIL_PAID_DELIVERY={"LIBRARY_EMAIL_RATE_LIMIT": (2, 3600)})
def test_one_address_is_sent_a_few_links_at_most_silently(shop):
    answers = set()
    for n in range(4):
        response = ask(Client(REMOTE_ADDR=f"192.0.2.{n}"))
        answers.add((response.status_code, body(response)))
    assert len(answers) == 1  # the same page, over the limit too
    assert len(mail.outbox) == 2


def test_a_bad_address_is_said_to_be_bad_and_sends_nothing(client, shop):
    response = ask(client, "not an address")
    assert response.status_code == 200
    assert 'aria-invalid="true"' in response.content.decode()
    assert not mail.outbox and not OutboundEmail.objects.exists()


def test_buttons_are_post_only_and_csrf_protected(shop):
    ask(Client(), "guest@example.com")
    path, _ = sign_in_path()
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(path).status_code == 403
    assert LibrarySignIn.objects.get().used_at is None
    assert strict.post(URL, {"email": "guest@example.com"}).status_code == 403
    assert len(mail.outbox) == 1
    # With the page's CSRF token the sign-in works; the other buttons still need theirs.
    page = strict.get(path)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    assert strict.post(path, {"csrfmiddlewaretoken": csrf}).status_code == 303
    assert strict.post(f"/shop/library/{shop['guide'].public_id}/").status_code == 403
    assert strict.post("/shop/library/sign-out/").status_code == 403
    assert strict.get(f"/shop/library/{shop['guide'].public_id}/").status_code == 405
    assert not DownloadLink.objects.exists()
    assert library.SESSION_KEY in strict.session


def test_pages_showing_a_token_have_the_strict_csp_and_private_headers(client, shop):
    ask(client)
    path, _ = sign_in_path()
    for response in (client.get(path), client.get(path + "x/"), client.get(URL), ask(client)):
        if response.status_code == 404:
            continue
        policy = response["Content-Security-Policy"]
        assert "script-src 'nonce-" in policy and "default-src 'none'" in policy
        assert response["Cache-Control"] == "private, no-store"
        assert response["Referrer-Policy"] == "same-origin"


def test_the_sign_in_token_is_kept_out_of_logs(client, shop):
    ask(client)
    path, token = sign_in_path()
    assert token not in log_filters.redact(f"Gone: {path}")
    assert token not in log_filters.redact(mail.outbox[0].body)


def test_a_signed_in_users_old_guest_purchases_join_their_account_once_proven(shop):
    user = UserFactory(username="guest", email="guest@example.com")
    browser = Client()
    browser.force_login(user)
    # An unverified account address alone opens nothing (LIBRARY_MATCH_EMAIL is off).
    html = browser.get(URL).content.decode()
    assert "You have no purchases yet." in html and "Field guide" not in html
    ask(browser)
    path, _ = sign_in_path()
    confirm = browser.get(path).content.decode()
    assert "You are signed in as guest" in confirm and "will be added to yours" in confirm
    assert browser.post(path).status_code == 303
    # Guest purchases are now the user's; one on another account stays there.
    assert set(Purchase.objects.filter(user=user).values_list("pk", flat=True)) == {
        shop["guide"].pk,
        shop["refunded"].pk,
    }
    assert Purchase.objects.get(pk=shop["on_account"].pk).user.username == "owner"
    assert Purchase.objects.get(pk=shop["pending"].pk).user is None
    # After signing out of the library the account keeps them; the Django login stays.
    browser.post("/shop/library/sign-out/")
    html = browser.get(URL).content.decode()
    assert f"/shop/library/{shop['guide'].public_id}/" in html
    assert f"/shop/library/{shop['on_account'].public_id}/" not in html
    assert "_auth_user_id" in browser.session


def test_a_failed_send_leaves_no_working_link_and_the_retry_sends_a_new_one(client, shop, settings):
    settings.EMAIL_BACKEND = "tests.mail_backends.DownBackend"
    DownBackend.handed = []
    response = ask(client)
    assert response.status_code == 200 and "Check your email" in response.content.decode()
    email = OutboundEmail.objects.get()
    assert (email.kind, email.status, email.attempts) == ("library_sign_in", "pending", 1)
    assert not LibrarySignIn.objects.exists()  # the failed attempt's link was discarded

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundEmail.objects.update(next_attempt_at=timezone.now())
    assert sweep_emails().startswith("queued 1")
    assert len(mail.outbox) == 1
    assert mail.outbox[0].message()["Message-ID"] == email.message_id
    failed_path, _ = sign_in_path(DownBackend.handed[0])
    assert client.post(failed_path).status_code == 410
    path, _ = sign_in_path()
    assert client.post(path).status_code == 303


def test_the_desk_timeline_shows_the_sign_in_email(client, shop):
    from wagtail_paid_delivery import timeline

    ask(client)
    entries = timeline.build_timeline(shop["guide"])
    assert any(e.title == "Library sign-in link (the buyer asked) sent" for e in entries)


def test_a_sign_in_email_for_an_address_that_no_longer_has_purchases_is_cancelled(client, shop):
    from wagtail_paid_delivery import outbox

    email, _ = outbox.promise(OutboundEmail.Kind.LIBRARY_SIGN_IN, to="gone@example.com")
    assert outbox.attempt(email.pk).startswith("cancelled")
    assert not mail.outbox and not LibrarySignIn.objects.exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_eight_parallel_presses_of_one_link_open_one_session_on_postgres(shop):
    from django.db import connection

    from tests.concurrency import run_at_once

    if connection.vendor != "postgresql":
        pytest.skip("row-level races are proven on PostgreSQL")
    for _ in range(3):  # the race lands differently each time
        mail.outbox = []
        ask(Client())
        path, _ = sign_in_path()
        clients = [Client(REMOTE_ADDR=f"198.51.100.{n}") for n in range(8)]
        statuses = run_at_once([lambda c=c, p=path: c.post(p).status_code for c in clients])
        assert sorted(statuses) == [303] + [410] * 7
        opened = [c for c in clients if library.SESSION_KEY in c.session]
        assert len(opened) == 1
