"""File responses for download hand-offs: the one entry point, :func:`serve_file`.

The flow for one request on a hand-off URL (docs/architecture.md, "What counts as a download"):

1. the view has read the signed hand-off and checked its link, as at every use;
2. the ``before_serve_paid_download`` hook may answer instead;
3. the backend looks the file up in storage (missing: a buyer-facing error, nothing counted);
4. the Range is resolved (``ranges``) and the backend says what the response will promise and
   whether it could ride on an earlier count (``backends.Terms``);
5. a GET is then counted, let through free, or refused, before any byte is sent
   (``links.reserve_download``); HEAD never counts and answers as that GET would;
6. the backend builds the response (``backends``); when it is closed having sent nothing (where
   the backend can tell) the count is released;
7. ``download_served`` is sent and every request leaves a ``DownloadEvent``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import http_date
from wagtail import hooks

from .. import links, versions
from ..models import DownloadEvent, DownloadLink
from ..models.pages import AbstractProductFile
from ..signals import download_served
from .backends import FileUnavailable, SendTracker, ServingBackend, StoredFile, get_backend
from .ranges import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    if_range_allows,
    parse_range,
)

__all__ = ["BEFORE_SERVE_HOOK", "FileUnavailable", "redirect_origins", "serve_file"]

logger = logging.getLogger(__name__)

#: Name of the Wagtail hook run before a file is served: ``fn(request, link, file)``; returning an
#: HttpResponse answers the request instead (nothing is counted).
BEFORE_SERVE_HOOK = "before_serve_paid_download"

#: Headers on every file response (and 416s), after Wagtail's document serving.
FILE_RESPONSE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Accept-Ranges": "bytes",
}


def redirect_origins(files: Iterable[AbstractProductFile]) -> list[str]:
    """Origins other than this site's that hand-offs of ``files`` send the browser to.

    Only the presigned backend has any (its storage); the download page's Content-Security-Policy
    lets the button's form end there.
    """
    return get_backend().redirect_origins(files)


def serve_file(
    request: HttpRequest,
    link: DownloadLink,
    file: AbstractProductFile,
    handoff: links.Handoff,
    *,
    backend: ServingBackend | None = None,
    now: datetime | None = None,
) -> HttpResponseBase:
    """The response for a checked link's file; raises FileUnavailable or LinkUsedUp.

    The caller has checked the link and that the file belongs to its product. The bytes are
    those of the version the purchase is entitled to (``versions.entitled_file``).
    """
    file = versions.entitled_file(link.purchase, file)
    for fn in hooks.get_hooks(BEFORE_SERVE_HOOK):
        result = fn(request, link, file)
        if isinstance(result, HttpResponseBase):
            links.record_event(
                request, link=link, file_id=file.pk, outcome="hook", handoff=handoff.nonce
            )
            return result

    backend = backend or get_backend()
    is_head = request.method == "HEAD"
    stored = backend.locate(file, open_file=not is_head)
    try:
        byte_range = None
        if if_range_allows(request.headers.get("If-Range"), stored.etag, stored.last_modified):
            byte_range = parse_range(request.headers.get("Range"), stored.size)
    except RangeNotSatisfiable:
        stored.close()
        links.record_event(
            request, link=link, file_id=file.pk, outcome="not_satisfiable", handoff=handoff.nonce
        )
        response416 = HttpResponse(status=416)
        response416["Content-Range"] = f"bytes */{stored.size}"
        _file_headers(response416, stored)
        return response416

    terms = backend.terms(request, stored, byte_range)
    promised, size, may_be_free = terms.promised, stored.size, terms.may_be_free
    response: HttpResponseBase
    if is_head:
        links.check_handoff(
            link, file, handoff, promised=promised, size=size, may_be_free=may_be_free, now=now
        )
        response = _head_response(stored, byte_range)
        links.record_event(
            request, link=link, file_id=file.pk, outcome="head", handoff=handoff.nonce
        )
    else:
        tracker = SendTracker()
        try:
            event = links.reserve_download(
                request,
                link,
                file,
                handoff,
                promised=promised,
                size=size,
                may_be_free=may_be_free,
                now=now,
            )
        except BaseException:
            stored.close()
            raise
        response = backend.respond(stored, byte_range, tracker)
        response._resource_closers.append(_finish(event, tracker))  # type: ignore[attr-defined]
    _file_headers(response, stored)
    download_served.send(sender=type(file), request=request, link=link, file=file)
    return response


def _head_response(stored: StoredFile, byte_range: ByteRange | None) -> HttpResponse:
    response = HttpResponse(content_type=stored.content_type)
    if byte_range is not None:
        response.status_code = 206
        response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{stored.size}"
    response["Content-Length"] = str(byte_range.length if byte_range else stored.size)
    return response


def _finish(event: DownloadEvent, tracker: SendTracker) -> Callable[[], None]:
    def close() -> None:
        try:
            if event.counted and tracker.nothing_sent:
                links.release_download(event)
            elif not tracker.unknown:
                # (With sendfile the count is unknown: bytes_sent stays empty, nothing to write.)
                links.record_bytes_sent(event, tracker.sent)
        except Exception:  # closing must never break the server's cleanup
            logger.exception("Could not finish download event %s", event.pk)

    return close


def _file_headers(response: HttpResponseBase, stored: StoredFile) -> None:
    for name, value in FILE_RESPONSE_HEADERS.items():
        response[name] = value
    response["Content-Disposition"] = content_disposition(stored.filename)
    response["ETag"] = stored.etag
    if stored.last_modified is not None:
        response["Last-Modified"] = http_date(stored.last_modified.timestamp())
