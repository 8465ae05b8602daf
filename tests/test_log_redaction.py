"""Download tokens and hand-off signatures never reach the logs (with RedactTokensFilter)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import PurchaseFactory
from wagtail_paid_delivery import links
from wagtail_paid_delivery.log_filters import REDACTED, RedactTokensFilter, redact
from wagtail_paid_delivery.models import DownloadLink

pytestmark = pytest.mark.django_db


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record):
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    """A handler with the filter on the loggers that carry request paths, as LOGGING would."""
    handler = ListHandler()
    handler.addFilter(RedactTokensFilter())
    loggers = [
        logging.getLogger(name) for name in ("django", "django.server", "wagtail_paid_delivery")
    ]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def everything(handler) -> str:
    parts = list(handler.lines)
    for record in handler.records:
        request = getattr(record, "request", None)
        if request is not None and hasattr(request, "get_full_path"):
            parts += [request.get_full_path(), request.path_info, str(request.META)]
    return "\n".join(parts)


def test_404_and_410_on_token_urls_log_no_token(client, home, captured):
    purchase = PurchaseFactory(paid=True)
    expired = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=expired.link.pk).update(
        expires_at=timezone.now() - timedelta(hours=1)
    )
    unknown = "A" * 43
    live = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    handoff = links.make_handoff(live.link, purchase.product.specific.product_files[0])
    tampered = handoff[:-3] + "xyz"

    referer = f"http://testserver/shop/d/{live.token}/"
    assert client.get(f"/shop/d/{unknown}/?x=1", HTTP_REFERER=referer).status_code == 404
    assert client.get(f"/shop/d/{expired.token}/").status_code == 410
    assert client.get(f"/shop/d/h/{tampered}/").status_code == 404
    assert client.post(f"/shop/d/{expired.token}/99999/").status_code == 410

    text = everything(captured)
    assert len(captured.records) >= 4  # the requests were logged…
    assert "Not Found: /shop/d/[redacted]/" in text and "Gone: /shop/d/[redacted]/" in text
    for secret in (unknown, expired.token, live.token, tampered, handoff):  # …without a secret
        assert secret not in text
    assert captured.records[0].status_code == 404


def test_development_server_access_log_is_redacted(captured):
    token = "b" * 43
    logging.getLogger("django.server").info(
        '"%s" %s %s', f"GET /shop/d/{token}/ HTTP/1.1", "200", "1234"
    )
    logging.getLogger("django.server").info(
        '"%s" %s %s', "GET /shop/d/h/eyJsIjoxfQ:1abc:sig-value_here/ HTTP/1.1", "206", "9"
    )
    assert captured.lines == [
        'django.server INFO "GET /shop/d/[redacted]/ HTTP/1.1" 200 1234',
        'django.server INFO "GET /shop/d/h/[redacted]/ HTTP/1.1" 206 9',
    ]


def test_messages_arguments_and_tracebacks_are_redacted(captured):
    token = "c" * 43
    logger = logging.getLogger("wagtail_paid_delivery.test")
    logger.warning(f"inline /d/{token}/ in the message")
    logger.warning("mapping %(url)s", {"url": f"https://shop.example/shop/d/{token}/"})

    class Url:
        def __str__(self):
            return f"/shop/d/{token}/"

    logger.warning("object %s and number %d", Url(), 3)
    try:
        raise ValueError(f"bad link /shop/d/{token}/")
    except ValueError:
        logger.exception("failed")
    handler = captured
    text = "\n".join(handler.lines)
    assert token not in text
    assert "object /shop/d/[redacted]/ and number 3" in text
    assert "bad link /shop/d/[redacted]/" in text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/shop/d/" + "a" * 43 + "/", "/shop/d/[redacted]/"),
        ("/shop/d/" + "a" * 43 + "/12/", "/shop/d/[redacted]/12/"),
        ("/shop/d/h/abc.def:ghi-jk_l/", "/shop/d/h/[redacted]/"),
        # Issue 11 changed this: any length is redacted (a truncated link leaks most of a token).
        ("/shop/d/short/", "/shop/d/[redacted]/"),
        ("/blog/posts/", "/blog/posts/"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected
    assert REDACTED not in expected or redact(expected) == expected


def test_sandbox_logging_filters_every_handler():
    from sandbox import settings as sandbox_settings

    logging_conf = sandbox_settings.LOGGING
    assert "redact_tokens" in logging_conf["filters"]
    for name, handler in logging_conf["handlers"].items():
        assert "redact_tokens" in handler.get("filters", []), name


# Issue 11: redaction by the URLs' shape, after undoing escapes, for any token length ------------

TOKEN = "Qx7-_a" * 7 + "Z"  # 43 characters, like a real token
SIG = "eyJsIjoxLCJmIjoyfQ:1uAbCd:Zm9vYmFyYmF6cXV4"  # a hand-off's shape (signing.dumps)


def leaks(text: str) -> bool:
    """Whether ``text`` holds any 8 characters in a row of the token or the signature."""
    return any(secret[i : i + 8] in text for secret in (TOKEN, SIG) for i in range(len(secret) - 7))


@pytest.mark.parametrize(
    "text, expected",
    [
        # Plain shapes, any prefix, any length.
        (f"/shop/d/{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/d/{TOKEN}/", "/d/[redacted]/"),
        (f"/en/shop/d/{TOKEN}/12/", "/en/shop/d/[redacted]/12/"),
        (f"/shop/d/h/{SIG}/", "/shop/d/h/[redacted]/"),
        (f"/shop/d/{TOKEN[:20]}", "/shop/d/[redacted]"),  # truncated link
        (f"/shop/d/{TOKEN[:1]}/", "/shop/d/[redacted]/"),
        (f"/shop/d/h/{SIG[:10]}", "/shop/d/h/[redacted]"),
        # Letter case: d, D, h, H.
        (f"/shop/D/{TOKEN}/", "/shop/D/[redacted]/"),
        (f"/shop/d/H/{SIG}/", "/shop/d/H/[redacted]/"),
        # Percent-encoding, once, twice, three times, of the slash, the d, the h, the token.
        (f"/shop/d%2F{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/d%2f{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop%2Fd%2F{TOKEN}%2F", "/shop/d/[redacted]/"),
        (f"/shop/%64/{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/%44/{TOKEN}/", "/shop/D/[redacted]/"),
        (f"/shop/d/%68/{SIG}/", "/shop/d/h/[redacted]/"),
        (f"/shop/d%2Fh%2F{SIG}%2F", "/shop/d/h/[redacted]/"),
        (f"/shop/d%252F{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/d%25252F{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/%2564/{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/d/{TOKEN[:30]}%{ord(TOKEN[30]):02X}{TOKEN[31:]}/", "/shop/d/[redacted]/"),
        # Extra slashes and "./" segments (a proxy that normalises them routes the URL).
        (f"/shop//d//{TOKEN}/", "/shop//d//[redacted]/"),
        (f"/shop/d/./{TOKEN}/", "/shop/d/./[redacted]/"),
        (f"/shop/d/.//h/./{SIG}/", "/shop/d/.//h/./[redacted]/"),
        (f"/shop/d/%2E/{TOKEN}/", "/shop/d/./[redacted]/"),
        # Whitespace after d/ (a link pasted from a wrapped plain-text email).
        (f"Not Found: /shop/d/ {TOKEN}/", "Not Found: /shop/d/[redacted]/"),
        (f"/shop/d/%20{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop/d/%0A{TOKEN}/", "/shop/d/[redacted]/"),
        ('"GET /shop/d/ HTTP/1.1" 404', '"GET /shop/d/ HTTP/1.1" 404'),
        # JSON and HTML escapes.
        (f"\\/shop\\/d\\/{TOKEN}\\/", "/shop/d/[redacted]/"),
        (f"/shop/d\\u002f{TOKEN}/", "/shop/d/[redacted]/"),
        (f"/shop&#47;d&#x2F;{TOKEN}/", "/shop/d/[redacted]/"),
        # Query strings, absolute URLs, request lines, reprs, longer messages.
        (f"/shop/thanks/?next=%2Fshop%2Fd%2F{TOKEN}%2F", "/shop/thanks/?next=/shop/d/[redacted]/"),
        (f"/search/?q=/shop/d/{TOKEN}/&page=2", "/search/?q=/shop/d/[redacted]/&page=2"),
        (
            f"https://shop.example/shop/d/{TOKEN}/?a=b",
            "https://shop.example/shop/d/[redacted]/?a=b",
        ),
        (f"https://shop.example:8443/d/{TOKEN}", "https://shop.example:8443/d/[redacted]"),
        (f'"GET /shop/d/{TOKEN}/ HTTP/1.1" 200 12', '"GET /shop/d/[redacted]/ HTTP/1.1" 200 12'),
        (
            f"GET http://shop.example/shop/d/h/{SIG}/ HTTP/1.1",
            "GET http://shop.example/shop/d/h/[redacted]/ HTTP/1.1",
        ),
        (f"<WSGIRequest: GET '/shop/d/{TOKEN}/'>", "<WSGIRequest: GET '/shop/d/[redacted]/'>"),
        (f"Resolver404: {{'path': 'd/{TOKEN}/'}}", "Resolver404: {'path': 'd/[redacted]/'}"),
        (
            f"links /shop/d/{TOKEN}/ and /shop/d/h/{SIG}/ x",
            "links /shop/d/[redacted]/ and /shop/d/h/[redacted]/ x",
        ),
        # A token outside a URL, as the views' keyword arguments print.
        (f"callback_kwargs={{'token': '{TOKEN}'}}", "callback_kwargs={'token': '[redacted]'}"),
        (f'{{"signed": "{SIG}", "n": 1}}', '{"signed": "[redacted]", "n": 1}'),
        # Left alone: no delivery shape.
        ("/blog/posts/?q=50%2F50", "/blog/posts/?q=50%2F50"),
        ("the id/123 and and/more", "the id/123 and and/more"),
        ("/shop/d/", "/shop/d/"),
        ("/shop/d/h/", "/shop/d/h/"),
        ("/shop/d/[redacted]/", "/shop/d/[redacted]/"),
        ("/shop/d/h/[redacted]/", "/shop/d/h/[redacted]/"),
    ],
)
def test_redact_by_shape_after_undoing_escapes(text, expected):
    assert redact(text) == expected
    assert not leaks(redact(text))
    assert redact(redact(text)) == redact(text)  # two handlers, two passes: no change


def test_a_text_that_never_stops_unescaping_is_redacted_whole():
    hostile = "/shop/d%" + "25" * 40 + "2F" + TOKEN  # 41 levels of percent-encoding
    assert redact(hostile) == REDACTED


def test_a_d_segment_elsewhere_on_the_site_is_redacted_too():
    # Documented: the filter cannot tell the app's prefix from another "d" segment.
    assert redact("/media/d/photo.jpg") == "/media/d/[redacted]"


def everything_deep(handler) -> str:
    """Every text a handler or an error tracker could take from the records."""
    parts = [everything(handler)]
    for record in handler.records:
        parts.append(repr(vars(record)))
        request = getattr(record, "request", None)
        if request is not None and hasattr(request, "GET"):
            parts += [
                repr(request),
                repr(dict(request.GET.lists())),
                repr(request.COOKIES),
                repr(dict(request.headers)),
                repr(getattr(request, "resolver_match", None)),
                request.build_absolute_uri(),
            ]
    return "\n".join(parts)


@pytest.mark.parametrize(
    "path",
    [
        "/shop/d%2F{token}/",  # the test client, like a WSGI server, decodes %2F: the view runs
        "/shop/%64/{token}/",
        "/shop/d%252F{token}/",  # double-encoded: Wagtail's 404
        "/shop/D/{token}/",  # mixed case: Wagtail's 404
        "/shop/d/{short}/",  # truncated
        "/shop/d/{token}/?next=%2Fshop%2Fd%2F{token}%2F",
        "/shop/d/h/{short}/",
        "/shop/d/%68/{short}/",
        "/shop/d/%20{token}/",  # Django logs the decoded path: "/shop/d/ <token>/"
        "/shop//d//{token}/",
    ],
)
def test_encoded_and_truncated_delivery_urls_log_no_token(client, home, captured, path):
    purchase = PurchaseFactory(paid=True)
    expired = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    DownloadLink.objects.filter(pk=expired.link.pk).update(
        expires_at=timezone.now() - timedelta(hours=1)
    )
    token = expired.token
    url = path.format(token=token, short=token[:25])
    referer = f"https://shop.example/shop/d%2F{token}/"
    client.cookies["wpd_checkout"] = f"signed-{token}"
    response = client.get(url, HTTP_REFERER=referer, HTTP_X_ORIGINAL_URL=url)
    assert response.status_code in (404, 410)

    assert captured.records, "the request was logged"
    text = everything_deep(captured)
    for i in range(len(token) - 7):
        assert token[i : i + 8] not in text, (url, token[i : i + 8])
    assert "[redacted]" in text


def test_token_in_extra_stack_info_and_request_args_is_redacted(captured, rf):
    logger = logging.getLogger("wagtail_paid_delivery.test")
    request = rf.get(f"/shop/d/{TOKEN}/?next=/shop/d/h/{SIG}/", HTTP_REFERER=f"/shop/d/{TOKEN}/")
    logger.warning(
        "request %r", request, extra={"url": f"/shop/d/{TOKEN}/", "paths": [f"/d/{TOKEN}"]}
    )
    logger.warning("where %s", f"/shop/d/{TOKEN}/", stack_info=True)
    logger.warning(request)  # a non-string message
    record = captured.records[0]
    assert record.url == "/shop/d/[redacted]/" and record.paths == ["/d/[redacted]"]
    assert not leaks(everything_deep(captured))
    assert not leaks(captured.records[1].stack_info)
    # The view's request is untouched: only the record's copy is cleaned.
    assert TOKEN in request.path and TOKEN in request.META["HTTP_REFERER"]


def test_an_exception_that_holds_a_token_loses_its_exc_info_but_keeps_its_text(captured):
    logger = logging.getLogger("wagtail_paid_delivery.test")
    try:
        raise ValueError(f"bad link /shop/d%2F{TOKEN}/")
    except ValueError:
        logger.exception("failed")
    record = captured.records[0]
    assert record.exc_info is None  # nobody can format the exception (and its token) again
    assert "ValueError: bad link /shop/d/[redacted]/" in record.exc_text
    assert "ValueError: bad link /shop/d/[redacted]/" in captured.lines[0]
    try:
        raise ValueError("no secret here")
    except ValueError:
        logger.exception("failed")
    assert captured.records[1].exc_info is not None  # kept when it is clean


def test_arguments_that_cannot_be_formatted_still_give_a_redacted_message(captured):
    class Exploding:
        def __str__(self):
            raise RuntimeError("boom")

    logging.getLogger("wagtail_paid_delivery.test").warning(
        f"at /shop/d/{TOKEN}/ %s %d", Exploding(), "not a number"
    )
    assert captured.records[0].getMessage() == "at /shop/d/[redacted]/ %s %d"
    assert not leaks("\n".join(captured.lines))


def test_error_email_for_a_500_on_a_download_url_holds_no_token(
    client, home, settings, mailoutbox, monkeypatch, rf
):
    """AdminEmailHandler (mail_admins) with the filter: message, request, variables, cookies."""
    from django.http import HttpResponse
    from django.test import Client
    from django.utils.log import AdminEmailHandler

    from wagtail_paid_delivery import binding

    settings.ADMINS = [("Ops", "ops@example.com")]
    purchase = PurchaseFactory(paid=True)
    token = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK).token
    # The binding cookie of the browser that bought it.
    cookie_response = HttpResponse()
    binding.bind_purchase(rf.get("/"), cookie_response, purchase.public_id)
    cookie = cookie_response.cookies[binding.COOKIE_NAME].value

    def broken_check(token):  # an undecorated frame whose variable is the raw token
        raise RuntimeError("the database went away")

    monkeypatch.setattr(links, "check_token", broken_check)
    handler = AdminEmailHandler(include_html=True)
    handler.addFilter(RedactTokensFilter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        browser = Client(raise_request_exception=False)
        browser.cookies[binding.COOKIE_NAME] = cookie
        response = browser.get(
            f"/shop/d/{token}/?from=%2Fshop%2Fd%2F{token}", HTTP_REFERER=f"/shop/d/{token}/"
        )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500

    # Ours, and Django's default mail_admins after it (the record was cleaned in place).
    assert mailoutbox
    for email in mailoutbox:
        html = email.alternatives[0][0] if email.alternatives else ""
        assert "the database went away" in email.body  # the report is there…
        assert "/shop/d/[redacted]/" in email.subject + email.body
        for text in (email.subject, email.body, html):  # …without the token or the cookie
            for i in range(len(token) - 7):
                assert token[i : i + 8] not in text
            assert cookie not in text
    html = mailoutbox[0].alternatives[0][0]
    assert "broken_check" in html and "Local vars" in html.replace("Local Vars", "Local vars")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_development_server_access_log_through_runservers_handler(captured, home):
    """runserver's own WSGIRequestHandler logs every request line through django.server."""
    import socket
    import threading

    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    token = TOKEN
    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(WSGIHandler())  # not get_wsgi_application(): its setup() redoes LOGGING
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def send(request_line: str, *headers: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = "\r\n".join([request_line, "Host: 127.0.0.1", *headers, "Connection: close"])
            sock.sendall((head + "\r\n\r\n").encode("latin-1"))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    try:
        requests = [
            f"GET /shop/d/h/{SIG}/ HTTP/1.1",
            f"GET /shop/d%2F{token[:30]}/ HTTP/1.1",
            f"GET /shop/%64/{token}/12/ HTTP/1.1",
            f"GET /shop/d%252F{token}/ HTTP/1.1",
            f"GET /shop/d/%68/{SIG}/ HTTP/1.1",
            f"GET http://127.0.0.1:{port}/shop/D/{token}/ HTTP/1.1",  # absolute form
            f"GET /shop/thanks/?next=%2Fshop%2Fd%2F{token} HTTP/1.1",
            f"GET /shop/d/{token}/ HTTP/9.9",  # refused by the server itself (505)
            f"BREW /shop/d/{token}/",  # bad request syntax (400)
        ]
        for line in requests:
            assert send(line, f"Referer: http://127.0.0.1/shop/d/{token}/")
    finally:
        server.shutdown()
        server.server_close()

    # The server logs a request after its response went out, from the request's thread.
    deadline = time.monotonic() + 10
    while sum(r.name == "django.server" for r in captured.records) < len(requests):
        assert time.monotonic() < deadline, captured.lines
        time.sleep(0.05)
    text = "\n".join(captured.lines)
    assert not leaks(text), text
    assert '"GET /shop/d/h/[redacted]/ HTTP/1.1"' in text
    assert '"GET /shop/d/[redacted]/ HTTP/1.1"' in text
