"""Keeping download tokens and hand-off signatures out of logs and error reports.

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

What is redacted is found by the *shape* of the delivery URLs, not by what a token looks like, so
a truncated or mangled link is redacted too: the path segment after ``d/`` (the download page
``d/<token>/`` and its button ``d/<token>/<file id>/``) and after ``d/h/`` (the hand-off), under
whatever prefix the site mounts the app, in any letter case, also when the text hides it behind
percent-encoding (``d%2F…``, ``%64/…``, ``d%252F…`` and deeper), ``\\/`` (JSON) or HTML character
references. A path segment ``d`` elsewhere on the site (``/blog/d/…``) is redacted as well: the
filter cannot tell, and over-redacting a log line costs less than a leaked link.

Logs outside Python (the web server's access log, a CDN's, an error tracker's copy of the
request) need their own scrubbing; the README says how.
"""

from __future__ import annotations

import copy
import html
import logging
import re
from collections.abc import ItemsView
from typing import Any
from urllib.parse import unquote

from django.http import HttpRequest, QueryDict
from django.urls import ResolverMatch
from django.views.debug import SafeExceptionReporterFilter

from . import binding

#: What a token or hand-off signature is replaced with.
REDACTED = "[redacted]"

#: A delivery URL's secret segment: ``d/`` (or ``d/h/``) that starts a path segment, then
#: anything up to the segment's end. ``h/`` after ``d/`` is always read as the hand-off, and a
#: segment that already says ``[redacted]`` is left alone, so redacting twice changes nothing.
_SHAPE = re.compile(
    r"(?<![A-Za-z0-9._~%-])"  # "d" is a whole segment: after "/", a quote, a space, the start
    r"([dD]/(?:\.?/)*)"  # extra slashes and "./" segments: a proxy may normalise them away
    r"(?:([hH]/(?:\.?/)*)|(?![hH]/))"
    r"(?!\[redacted\]|\.?/)"  # (not a "./" given back by backtracking)
    # Whitespace first: a link pasted from a wrapped plain-text email reaches Django as
    # d/%20<token>, and Django logs the decoded path. Not before a request line's HTTP/.
    r"(?:[ \t\r\n]+(?!HTTP/|\[redacted\])(?=[^/\s?#\"'<>\\]))?"
    r"[^/\s?#\"'<>\\]+"
)

#: Escapes a token can hide behind in a log line: percent-encoding (at any depth, undone one
#: level at a time), JSON's ``\/`` and HTML character references.
_ESCAPED = re.compile(r"%[0-9A-Fa-f]{2}|\\/|\\u00[0-9A-Fa-f]{2}|&#?[0-9A-Za-z]+;")

#: Rounds of unescaping before a text that still changes is taken for hostile and replaced whole.
_MAX_ROUNDS = 12

#: A record's own attributes (cleaned one by one); any other attribute came in ``extra``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: The binding cookie in a Cookie header: it carries the success page's token (signed, not
#: encrypted).
_BINDING_COOKIE = re.compile(r"(?<![^;\s])(" + re.escape(binding.COOKIE_NAME) + r"=)[^;]*")

#: URL keyword arguments that hold a raw token or hand-off (ResolverMatch, error reports).
_SECRET_KWARGS = ("token", "signed")

#: A token outside a URL, as the views' keyword arguments print: ``'token': '…'`` (a dict's or a
#: ResolverMatch's repr, JSON). Error reports print ``callback_kwargs`` in every frame.
_KWARG = re.compile(r"""(["'](?:token|signed)["']\s*:\s*)(["'])(?!\[redacted\])[^"']*\2""")


def _substitute(text: str) -> str:
    text = _SHAPE.sub(lambda m: m.group(1) + (m.group(2) or "") + REDACTED, text)
    return _KWARG.sub(lambda m: m.group(1) + m.group(2) + REDACTED + m.group(2), text)


def _unescape_once(text: str) -> str:
    text = unquote(text, errors="replace")
    text = text.replace("\\/", "/")
    text = re.sub(r"\\u00([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    return html.unescape(text)


def _unescaped(text: str) -> str | None:
    """``text`` with every escape undone, or None if it still changes after many rounds."""
    for _ in range(_MAX_ROUNDS):
        if not _ESCAPED.search(text):
            return text
        decoded = _unescape_once(text)
        if decoded == text:
            return text
        text = decoded
    return None


def redact(text: str) -> str:
    """``text`` with every download token and hand-off signature replaced.

    Shapes are looked for after undoing escapes (a server routes ``d/%68/<signed>/`` to the
    hand-off, so the filter must read it as one). A text whose delivery URLs are written plainly
    keeps everything else as it was; one that hides a delivery URL behind escapes comes back
    unescaped, with the URL redacted; one that keeps unescaping after many rounds (only a hostile
    request does that) comes back as ``[redacted]``.
    """
    if _ESCAPED.search(text):
        decoded = _unescaped(text)
        if decoded is None:
            return REDACTED
        if decoded != text and (_SHAPE.search(decoded) or _KWARG.search(decoded)):
            return _substitute(decoded)
    return _substitute(text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("latin-1")).encode("latin-1")
    if isinstance(value, (int, float, type(None))):
        return value
    if isinstance(value, HttpRequest):
        return redacted_request(value)
    try:
        text = str(value)
    except Exception:
        return value
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _redact_query(query: QueryDict) -> QueryDict:
    clean = QueryDict(mutable=True)
    for key, values in query.lists():
        clean.setlist(redact(key), [redact(v) if isinstance(v, str) else v for v in values])
    clean._mutable = False
    return clean


def _redact_cookies(cookies: dict[str, Any]) -> dict[str, Any]:
    return {
        name: REDACTED if name == binding.COOKIE_NAME else _redact_text(value)
        for name, value in cookies.items()
    }


def _redact_text(value: Any) -> Any:
    """Strings and bytes redacted; anything else as it is (never str() of an unknown object)."""
    return _redact_value(value) if isinstance(value, (str, bytes)) else value


def _redact_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: REDACTED if k in _SECRET_KWARGS else _redact_text(v) for k, v in kwargs.items()}


def _resolver_options(match: ResolverMatch) -> dict[str, Any]:
    return {
        "url_name": match.url_name,
        "app_names": match.app_names,
        "namespaces": match.namespaces,
        "route": match.route,
        "captured_kwargs": _redact_kwargs(getattr(match, "captured_kwargs", None) or {}),
        "extra_kwargs": getattr(match, "extra_kwargs", None),
    }


def redacted_request(request: HttpRequest) -> HttpRequest:
    """A shallow copy of ``request`` that says no token: path, META, query, cookies, URL kwargs.

    The copy (not the request) goes on the log record, so the view and middleware that are still
    working with the real request are not affected. It also carries
    :class:`RedactingExceptionReporterFilter`, which error emails (``AdminEmailHandler``) use for
    the traceback's variables.
    """
    if getattr(request, "_wpd_redacted", False):
        return request
    clean = copy.copy(request)
    clean.path = redact(request.path)
    clean.path_info = redact(request.path_info)
    clean.META = {k: redact(v) if isinstance(v, str) else v for k, v in request.META.items()}
    if isinstance(clean.META.get("HTTP_COOKIE"), str):
        clean.META["HTTP_COOKIE"] = _BINDING_COOKIE.sub(r"\1" + REDACTED, clean.META["HTTP_COOKIE"])
    # Cached properties computed from the real request would outlive the copy's new META.
    for cached in ("headers", "_current_scheme_host"):
        clean.__dict__.pop(cached, None)
    clean.GET = _redact_query(request.GET)  # type: ignore[assignment]
    clean.COOKIES = _redact_cookies(request.COOKIES)
    if "_post" in request.__dict__:  # never parse a body here; clean one that was parsed
        clean._post = _redact_query(request.POST)  # type: ignore[attr-defined]
    match = getattr(request, "resolver_match", None)
    if isinstance(match, ResolverMatch):
        # ResolverMatch refuses to be copied; a new one with the secrets replaced.
        clean.resolver_match = ResolverMatch(
            match.func,
            tuple(_redact_text(a) for a in match.args),
            _redact_kwargs(match.kwargs),
            **_resolver_options(match),
        )
    clean.exception_reporter_filter = RedactingExceptionReporterFilter()  # type: ignore[attr-defined]
    clean._wpd_redacted = True  # type: ignore[attr-defined]
    return clean


class _Redacted:
    """Stands in for a traceback variable: its representation, redacted."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class RedactingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error-report filter, plus delivery URLs redacted everywhere in the report.

    Error emails show every frame's local variables: a middleware's ``request`` or a resolver's
    ``path`` holds the token even where the view hid its own. Set it for every error report with
    ``DEFAULT_EXCEPTION_REPORTER_FILTER = "wagtail_paid_delivery.log_filters.
    RedactingExceptionReporterFilter"``; the log filter also puts it on the requests it cleans.
    """

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> ItemsView[str, Any]:
        cleaned: dict[str, Any] = {}
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            if name in _SECRET_KWARGS and isinstance(value, str):
                cleaned[name] = _Redacted(repr(REDACTED))
                continue
            try:
                text = repr(value)
            except Exception:
                cleaned[name] = value
                continue
            safe = redact(text)
            cleaned[name] = value if safe == text else _Redacted(safe)
        return cleaned.items()

    def get_safe_request_meta(self, request: Any) -> dict[str, Any]:
        meta = super().get_safe_request_meta(request)
        return {k: redact(v) if isinstance(v, str) else v for k, v in meta.items()}

    def get_safe_cookies(self, request: Any) -> dict[str, Any]:
        return _redact_cookies(super().get_safe_cookies(request))

    def get_post_parameters(self, request: Any) -> Any:
        post = super().get_post_parameters(request)
        return _redact_query(post) if isinstance(post, QueryDict) else post


class RedactTokensFilter(logging.Filter):
    """Redacts download tokens and hand-off signatures in a record; never drops a record.

    It cleans the message and its arguments, a formatted traceback and stack, the ``request``
    Django attaches (``django.request``, error emails) and any text passed in ``extra``. Running
    it twice (on two handlers) is harmless.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._clean(record)
        except Exception:  # a logging filter must never break logging: keep a safe minimum
            try:
                message = redact(record.getMessage())
            except Exception:
                message = REDACTED
            record.msg, record.args = message, ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            if hasattr(record, "request"):
                record.request = None
        return True

    def _clean(self, record: logging.LogRecord) -> None:
        self._clean_message(record)
        self._clean_traceback(record)
        for name, value in list(vars(record).items()):
            if name in _RECORD_ATTRS:
                continue
            if isinstance(value, (str, bytes, HttpRequest)):
                setattr(record, name, _redact_value(value))
            elif isinstance(value, (list, tuple)):
                cleaned = [_redact_text(v) for v in value]
                setattr(record, name, tuple(cleaned) if isinstance(value, tuple) else cleaned)
            elif isinstance(value, dict):
                setattr(record, name, {k: _redact_text(v) for k, v in value.items()})

    def _clean_message(self, record: logging.LogRecord) -> None:
        # Arguments first (a handler may read them apart from the message: error trackers do),
        # then the message they make. A format string is rewritten only when it holds a token:
        # undoing escapes in "%2d" would change its meaning.
        if isinstance(record.args, dict):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_value(a) for a in record.args)
        # Whatever the arguments were (a %r of an object, say), the final message must be clean.
        try:
            message = record.getMessage()
        except Exception:
            message = None
        if message is None or redact(message) != message:
            record.msg, record.args = redact(message or str(record.msg)), ()

    def _clean_traceback(self, record: logging.LogRecord) -> None:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            cleaned = redact(record.exc_text)
            if cleaned != record.exc_text:
                # The exception itself holds a token: whoever formats exc_info again (an error
                # email, an error tracker) would print it. The cleaned text stays.
                record.exc_text, record.exc_info = cleaned, None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
