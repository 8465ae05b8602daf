"""A logging filter that keeps download tokens and hand-off signatures out of logs.

A download link's token is the buyer's entitlement: anyone who reads it from a log can download
the files until the link expires. Django logs request paths in several places: ``django.request``
logs every 4xx and 5xx ("Not Found: /shop/d/<token>/", "Gone: …"), ``django.server`` (the
development server's access log) every request, and error reports carry the request itself.
Add :class:`RedactTokensFilter` to every handler (a filter on a *handler* sees the records of all
loggers that propagate to it; a filter on a logger only its own)::

    LOGGING = {
        "version": 1,
        "filters": {
            "redact_tokens": {"()": "wagtail_paid_delivery.log_filters.RedactTokensFilter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "filters": ["redact_tokens"]},
        },
        ...
    }

Logs outside Python (the web server's access log, a CDN's, an error tracker's copy of the
request) need their own scrubbing; the README says how.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from django.http import HttpRequest

#: What a token or hand-off signature is replaced with.
REDACTED = "[redacted]"

#: ``…/d/h/<signed hand-off>/`` first, then ``…/d/<43-character token>/``.
_PATTERNS = (
    re.compile(r"(/d/h/)[^/\s?#\"'<>\\]+"),
    re.compile(r"(/d/)[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"),
)

#: Request META keys that hold the path, the query or a URL of ours.
_META_KEYS = ("PATH_INFO", "REQUEST_URI", "RAW_URI", "QUERY_STRING", "HTTP_REFERER", "SCRIPT_URL")


def redact(text: str) -> str:
    """``text`` with every download token and hand-off signature replaced."""
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1" + REDACTED, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    if isinstance(value, (int, float, type(None))):
        return value
    try:
        text = str(value)
    except Exception:
        return value
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def redacted_request(request: HttpRequest) -> HttpRequest:
    """A shallow copy of ``request`` whose path and URL-bearing META say no token.

    The copy (not the request) goes on the log record, so the view and middleware that are still
    working with the real request are not affected.
    """
    clean = copy.copy(request)
    clean.path = redact(request.path)
    clean.path_info = redact(request.path_info)
    meta = dict(request.META)
    for key in _META_KEYS:
        if isinstance(meta.get(key), str):
            meta[key] = redact(meta[key])
    clean.META = meta
    return clean


class RedactTokensFilter(logging.Filter):
    """Redacts download tokens and hand-off signatures in a record; never drops a record.

    It cleans the message and its arguments, a formatted traceback, and the ``request`` Django
    attaches (``django.request``, error emails). Running it twice (on two handlers) is harmless.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._clean(record)
        except Exception:  # a logging filter must never break logging
            record.msg, record.args = REDACTED, ()
        return True

    def _clean(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        # Whatever the arguments were, the final message must be clean.
        try:
            message = record.getMessage()
        except Exception:
            message = None
        if message is None or redact(message) != message:
            record.msg, record.args = redact(message or str(record.msg)), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        request = getattr(record, "request", None)
        if isinstance(request, HttpRequest):
            record.request = redacted_request(request)
