"""Download tokens and hand-off signatures never reach the logs (with RedactTokensFilter)."""

from __future__ import annotations

import logging
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
        ("/shop/d/short/", "/shop/d/short/"),  # not a token: left alone
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
