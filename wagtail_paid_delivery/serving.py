"""File responses for download hand-offs: counting, Range/HEAD/If-Range, and the bytes.

The flow for one request on a hand-off URL (see DESIGN "Downloads: what counts"):

1. the signed hand-off names a link and a file; the link is checked again, as at every use;
2. the ``before_serve_paid_download`` hook may answer instead;
3. the backend looks the file up in storage (missing: a buyer-facing error, nothing counted);
4. the Range is resolved; a request that includes byte 0 is *counted*: the per-file counter row
   is locked, checked against the limit and incremented before any byte is sent, unless the
   same hand-off already counted in the last ten minutes. HEAD and continuations never count;
5. the backend builds the response; when it is closed having sent nothing (where the backend can
   tell) the count is released;
6. ``download_served`` is sent and every request leaves a :class:`DownloadEvent`.

The Django backend streams the bytes from this process. The offload backends (``SERVE_BACKEND``:
nginx X-Accel-Redirect, Apache X-Sendfile, presigned redirects) implement :class:`ServingBackend`
too; they hand the bytes to someone else and so can never tell that nothing was sent.
"""

from __future__ import annotations

import abc
import inspect
import ipaddress
import logging
import mimetypes
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Protocol
from urllib.parse import quote

from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.utils.http import http_date, parse_http_date_safe
from wagtail import hooks

from .conf import app_settings
from .models import DownloadEvent, DownloadLink, FileDownloadCount
from .models.pages import AbstractProductFile
from .signals import download_served
from .tokens import LinkUsedUp, add_downloads

logger = logging.getLogger(__name__)

#: Bytes read from storage and handed to the server at a time.
CHUNK_SIZE = 64 * 1024
#: A byte-0 request on a hand-off that already counted this recently does not count again
#: (players and download managers probe, then fetch).
RECOUNT_WINDOW = timedelta(minutes=10)
HANDOFF_SALT = "wagtail_paid_delivery.handoff"
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


class FileUnavailable(Exception):
    """The file is missing from storage (or storage failed): nobody can download it now."""


class BadHandoff(Exception):
    """The hand-off value was not signed by us (tampered, truncated, made up)."""


# Hand-offs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handoff:
    link_id: int
    file_id: int
    #: Random per button press: the identity "the same hand-off" refers to.
    nonce: str


def make_handoff(link: DownloadLink, file: AbstractProductFile) -> str:
    """A signed value naming one link and file, new for every button press."""
    payload = {"l": link.pk, "f": file.pk, "n": secrets.token_urlsafe(12)}
    return signing.dumps(payload, salt=HANDOFF_SALT)


def handoff_url(link: DownloadLink, file: AbstractProductFile) -> str:
    return reverse("wagtail_paid_delivery:handoff", args=[make_handoff(link, file)])


def read_handoff(value: str) -> Handoff:
    # No max_age: a hand-off resumes for as long as its link is valid, checked on every request.
    try:
        data = signing.loads(value, salt=HANDOFF_SALT)
        return Handoff(link_id=int(data["l"]), file_id=int(data["f"]), nonce=str(data["n"])[:32])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise BadHandoff from None


# Ranges ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    start: int
    #: Inclusive, as in Content-Range.
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    pass


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range asked for, None for the whole file, or :class:`RangeNotSatisfiable`.

    RFC 9110 lets a server ignore Range: we ignore what we do not serve (other units, syntax
    errors, and multiple ranges, which would need multipart/byteranges; no download client needs
    them) and answer with the whole file.
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.replace(" ", "").lower())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid, so ignored
    if start >= size:
        raise RangeNotSatisfiable
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def if_range_allows(header: str | None, etag: str, last_modified: datetime | None) -> bool:
    """Whether a Range may be honoured under ``If-Range`` (strong comparison only)."""
    if not header:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return header == etag and not etag.startswith("W/")
    parsed = parse_http_date_safe(header)
    return (
        parsed is not None
        and last_modified is not None
        and parsed == int(last_modified.timestamp())
    )


# Headers --------------------------------------------------------------------------------------


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and RFC 6266/8187 ``filename*`` for the real name."""
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, ""

    def ascii_only(text: str) -> str:
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return re.sub(r"[^A-Za-z0-9._ ()+-]", "_", text).strip(" .")

    fallback = (ascii_only(stem) or "download") + (f".{ascii_only(extension)}" if dot else "")
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += "; filename*=UTF-8''" + quote(filename, safe="!#$&+-.^_`|~")
    return value


def truncate_ip(address: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address: enough for abuse, not a person."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


def record_event(
    request: HttpRequest,
    *,
    link: DownloadLink | None,
    file_id: int | None,
    outcome: str,
    handoff: str = "",
    counted: bool = False,
    bytes_sent: int | None = None,
) -> DownloadEvent:
    """Log one request for a file's bytes (served, or refused and why)."""
    return DownloadEvent.objects.create(
        link=link,
        file_id=file_id,
        outcome=outcome,
        handoff=handoff,
        counted=counted,
        range_header=request.headers.get("Range", "")[:100],
        bytes_sent=bytes_sent,
        ip_address=truncate_ip(request.META.get("REMOTE_ADDR")),
        user_agent=request.headers.get("User-Agent", "")[:255],
    )


# Knowing whether anything was sent ------------------------------------------------------------


@dataclass
class SendTracker:
    """Counts bytes the server has taken *and written*.

    A chunk counts as sent once the server asks for the next one (it only asks after writing the
    previous), or when the body ends. A response closed before that has sent nothing we can
    vouch for. ``unknown`` is set when the server took the file descriptor (sendfile): from then
    on this process cannot see what was written.
    """

    sent: int = 0
    pending: int = 0
    finished: bool = False
    unknown: bool = False

    def offer(self, n: int) -> None:
        self.sent += self.pending
        self.pending = n

    def done(self) -> None:
        self.sent += self.pending
        self.pending = 0
        self.finished = True

    @property
    def nothing_sent(self) -> bool:
        return not self.unknown and self.sent == 0


class _TrackedFile:
    """A file object for FileResponse that reports reads to a :class:`SendTracker`.

    It keeps ``fileno()`` so WSGI servers still use ``wsgi.file_wrapper`` and sendfile.
    """

    def __init__(self, handle: IO[bytes], tracker: SendTracker) -> None:
        self._handle = handle
        self._tracker = tracker

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        if data:
            self._tracker.offer(len(data))
        else:
            self._tracker.done()
        return data

    def fileno(self) -> int:
        fileno = self._handle.fileno()  # may raise: then the server falls back to read()
        self._tracker.unknown = True
        return fileno

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self._handle.close()


def _range_chunks(
    handle: IO[bytes], byte_range: ByteRange, tracker: SendTracker
) -> Iterator[bytes]:
    handle.seek(byte_range.start)
    remaining = byte_range.length
    while remaining > 0:
        chunk = handle.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        tracker.offer(len(chunk))
        yield chunk
    tracker.done()


# Backends -------------------------------------------------------------------------------------


@dataclass
class StoredFile:
    """What a backend found in storage for one product file."""

    name: str
    size: int
    last_modified: datetime | None
    etag: str
    content_type: str
    filename: str
    handle: IO[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class ServingBackend(Protocol):
    """How the bytes leave. Checks and counting happen before a backend is asked."""

    #: Whether :attr:`SendTracker` can learn that a response sent nothing.
    can_tell_nothing_sent: bool

    def locate(self, file: AbstractProductFile, *, open_file: bool) -> StoredFile: ...

    def respond(
        self, stored: StoredFile, byte_range: ByteRange | None, tracker: SendTracker
    ) -> HttpResponseBase: ...


class DjangoBackend:
    """Bytes streamed by this process from the product file's storage, in constant memory.

    Whole files go out as a :class:`FileResponse` over the storage's own file object, so WSGI
    servers can use ``wsgi.file_wrapper`` (sendfile). Ranges are a generator that seeks once and
    reads :data:`CHUNK_SIZE` at a time.
    """

    can_tell_nothing_sent = True

    def locate(self, file: AbstractProductFile, *, open_file: bool) -> StoredFile:
        storage, name = file.file.storage, file.file.name or ""
        try:
            if not name:
                raise FileNotFoundError("no file recorded")
            size = storage.size(name)
            try:
                last_modified: datetime | None = storage.get_modified_time(name)
            except (NotImplementedError, AttributeError):
                last_modified = None
            handle = storage.open(name, "rb") if open_file else None
        except OSError as error:  # FileNotFoundError, permissions, a storage that is down
            logger.error(
                "Product file %s (%r, id %s) cannot be served: %s",
                name,
                file.title,
                file.pk,
                error,
                exc_info=True,
            )
            raise FileUnavailable(name) from error
        filename = name.rsplit("/", 1)[-1] or "download"
        if file.sha256:
            etag = f'"{file.sha256}"'
        else:
            stamp = int(last_modified.timestamp()) if last_modified else 0
            etag = f'"{size:x}-{stamp:x}"'
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return StoredFile(name, size, last_modified, etag, content_type, filename, handle)

    def respond(
        self, stored: StoredFile, byte_range: ByteRange | None, tracker: SendTracker
    ) -> HttpResponseBase:
        assert stored.handle is not None  # noqa: S101 (locate(open_file=True) for GET)
        response: HttpResponseBase
        if byte_range is None:
            response = FileResponse(
                _TrackedFile(stored.handle, tracker),  # type: ignore[arg-type]
                content_type=stored.content_type,
            )
            response.block_size = CHUNK_SIZE
            response["Content-Length"] = str(stored.size)
        else:
            response = StreamingHttpResponse(
                _range_chunks(stored.handle, byte_range, tracker),
                status=206,
                content_type=stored.content_type,
            )
            response._resource_closers.append(stored.handle.close)  # type: ignore[attr-defined]
            response["Content-Length"] = str(byte_range.length)
            response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{stored.size}"
        return response


class _OffloadBackend(DjangoBackend, abc.ABC):
    """Checks and counting stay in Django; another server sends the bytes.

    What changes (see DESIGN "Downloads: what counts"): every request still reaches this app
    first, so counting at request time, the ten-minute recount window and "continuations never
    count" hold (the Range header comes to the app with the request). What cannot hold is
    releasing a count when nothing was sent: the bytes leave elsewhere, so a counted request is
    kept counted (``tracker.unknown``) and ``bytes_sent`` stays unknown. HEAD, 416 and refusals
    are still answered by Django itself.
    """

    can_tell_nothing_sent = False

    def locate(self, file: AbstractProductFile, *, open_file: bool) -> StoredFile:
        # Never open the file here: somebody else reads it.
        stored = super().locate(file, open_file=False)
        stored.extra["storage"] = file.file.storage
        try:
            self.prepare(stored)  # before anything is counted
        except FileUnavailable as error:
            logger.error(
                "Product file %s (id %s) cannot be offloaded: %s", stored.name, file.pk, error
            )
            raise
        return stored

    def prepare(self, stored: StoredFile) -> None:
        """Work out what :meth:`offload` needs, or raise :class:`FileUnavailable`."""

    def respond(
        self, stored: StoredFile, byte_range: ByteRange | None, tracker: SendTracker
    ) -> HttpResponseBase:
        # The range is served by whoever sends the bytes, from the request's own Range header.
        tracker.unknown = True
        response = HttpResponse(content_type=stored.content_type)
        self.offload(response, stored)
        return response

    @abc.abstractmethod
    def offload(self, response: HttpResponse, stored: StoredFile) -> None:
        """Add the header that hands ``stored`` to the server."""


class NginxBackend(_OffloadBackend):
    """``X-Accel-Redirect`` to an ``internal`` nginx location aliasing the storage root.

    nginx serves the file (Range, If-Range against its own ETag, sendfile) and keeps the
    headers this app set that it passes with an accel-redirect (Content-Type,
    Content-Disposition, Cache-Control, Accept-Ranges, Set-Cookie, Expires). The security
    headers (nosniff, no-referrer, CSP) need ``add_header … $upstream_http_…`` in the internal
    location: the README has the configuration. ``X-Accel-Buffering`` is not sent: it governs
    buffering of a proxied body, and this response has none (nginx reads the file itself).
    """

    def offload(self, response: HttpResponse, stored: StoredFile) -> None:
        prefix = str(app_settings.NGINX_INTERNAL_PREFIX or "/_paid_files/")
        prefix = "/" + prefix.strip("/") + "/"
        # Percent-encoded: nginx decodes the URI before mapping it onto the internal location.
        response["X-Accel-Redirect"] = prefix + quote(stored.name.lstrip("/"), safe="/")
        # Never let a proxy cache keep an accel-redirect: it would skip the checks and counting.
        response["X-Accel-Expires"] = "0"


class ApacheBackend(_OffloadBackend):
    """``X-Sendfile`` with the file's absolute path, for Apache's mod_xsendfile.

    The storage must be on the local file system (``storage.path()``), and mod_xsendfile must
    allow the folder (``XSendFilePath``). Apache answers Range itself.
    """

    def prepare(self, stored: StoredFile) -> None:
        try:
            stored.extra["path"] = stored.extra["storage"].path(stored.name)
        except NotImplementedError as error:
            raise FileUnavailable(
                "SERVE_BACKEND 'apache' needs a storage on the local file system"
            ) from error

    def offload(self, response: HttpResponse, stored: StoredFile) -> None:
        response["X-Sendfile"] = stored.extra["path"]


class PresignedBackend(_OffloadBackend):
    """A 302 to a presigned storage URL that lives ``PRESIGNED_URL_LIFETIME`` seconds.

    For remote storages such as django-storages' S3Storage, whose ``url()`` signs with
    ``expire`` and passes ``parameters`` to S3 (``ResponseContentDisposition`` and
    ``ResponseContentType``, so the file still downloads under its name). A storage whose
    ``url()`` takes neither cannot be trusted to make a short-lived URL and is refused.
    """

    def prepare(self, stored: StoredFile) -> None:
        try:
            accepted = set(inspect.signature(stored.extra["storage"].url).parameters)
        except (TypeError, ValueError):
            accepted = set()
        if "expire" not in accepted:
            raise FileUnavailable(
                "SERVE_BACKEND 's3' needs a storage whose url() presigns with 'expire' "
                "(django-storages' S3Storage)"
            )
        stored.extra["url_parameters"] = "parameters" in accepted

    def offload(self, response: HttpResponse, stored: StoredFile) -> None:
        kwargs: dict[str, Any] = {"expire": int(app_settings.PRESIGNED_URL_LIFETIME)}
        if stored.extra["url_parameters"]:
            kwargs["parameters"] = {
                "ResponseContentDisposition": content_disposition(stored.filename),
                "ResponseContentType": stored.content_type,
                "ResponseCacheControl": "private, no-store",
            }
        response.status_code = 302
        response["Location"] = stored.extra["storage"].url(stored.name, **kwargs)


#: ``SERVE_BACKEND`` values and the backend each one names.
BACKENDS: dict[str, type[DjangoBackend]] = {
    "django": DjangoBackend,
    "nginx": NginxBackend,
    "apache": ApacheBackend,
    "s3": PresignedBackend,
    "presigned": PresignedBackend,
}


def get_backend() -> ServingBackend:
    """The serving backend the ``SERVE_BACKEND`` setting names (default: Django streams)."""
    return BACKENDS[str(app_settings.SERVE_BACKEND)]()


# Counting -------------------------------------------------------------------------------------


def reserve_download(
    request: HttpRequest,
    link: DownloadLink,
    file: AbstractProductFile,
    handoff: Handoff,
    *,
    now: datetime | None = None,
) -> DownloadEvent:
    """Count a download before any byte leaves, or raise :class:`LinkUsedUp`.

    The per-file counter row is locked for the check and increment, so parallel requests at the
    limit queue on it and only as many pass as the limit allows (on databases with row locks;
    SQLite serialises writers instead). The event is written under the same lock, so a second
    byte-0 request on the same hand-off sees the first one's count.
    """
    now = now or timezone.now()
    with transaction.atomic():
        counter = _lock_counter(link, file)
        already = DownloadEvent.objects.filter(
            handoff=handoff.nonce, counted=True, created_at__gte=now - RECOUNT_WINDOW
        ).exists()
        counted = False
        if not already:
            if link.download_limit is not None and counter.count >= link.download_limit:
                raise LinkUsedUp(link)
            FileDownloadCount.objects.filter(pk=counter.pk).update(count=F("count") + 1)
            add_downloads(link, 1)
            counted = True
        event = DownloadEvent(
            link=link,
            file_id=file.pk,
            outcome="served",
            handoff=handoff.nonce,
            counted=counted,
            created_at=now,
            range_header=request.headers.get("Range", "")[:100],
            ip_address=truncate_ip(request.META.get("REMOTE_ADDR")),
            user_agent=request.headers.get("User-Agent", "")[:255],
        )
        event.save()
    return event


def _lock_counter(link: DownloadLink, file: AbstractProductFile) -> FileDownloadCount:
    """The link's counter row for ``file``, locked until the transaction ends (created if new).

    A row this transaction inserts is locked by the insert; a concurrent first download blocks
    on the unique constraint, fails, and then waits for the lock like everyone else.
    """
    rows = FileDownloadCount.objects.select_for_update()
    counter = rows.filter(link=link, file_id=file.pk).first()
    if counter is None:
        try:
            with transaction.atomic():
                counter = FileDownloadCount.objects.create(link=link, file_id=file.pk)
        except IntegrityError:
            counter = rows.get(link=link, file_id=file.pk)
    return counter


def release_download(event: DownloadEvent) -> None:
    """Give a counted download back (its response sent nothing)."""
    with transaction.atomic():
        FileDownloadCount.objects.filter(
            link_id=event.link_id, file_id=event.file_id or 0, count__gt=0
        ).update(count=F("count") - 1)
        DownloadLink.objects.filter(pk=event.link_id or 0, download_count__gt=0).update(
            download_count=F("download_count") - 1
        )
        DownloadEvent.objects.filter(pk=event.pk).update(
            counted=False, outcome="not_sent", bytes_sent=0
        )


def _finish(event: DownloadEvent, tracker: SendTracker) -> Callable[[], None]:
    def close() -> None:
        try:
            if event.counted and tracker.nothing_sent:
                release_download(event)
            elif not tracker.unknown:
                # (With sendfile the count is unknown: bytes_sent stays empty, nothing to write.)
                DownloadEvent.objects.filter(pk=event.pk).update(bytes_sent=tracker.sent)
        except Exception:  # closing must never break the server's cleanup
            logger.exception("Could not finish download event %s", event.pk)

    return close


# The one entry point --------------------------------------------------------------------------


def serve_file(
    request: HttpRequest,
    link: DownloadLink,
    file: AbstractProductFile,
    handoff: Handoff,
    *,
    backend: ServingBackend | None = None,
    now: datetime | None = None,
) -> HttpResponseBase:
    """The response for a checked link's file; raises FileUnavailable or LinkUsedUp.

    The caller has checked the link and that the file belongs to its product.
    """
    for fn in hooks.get_hooks(BEFORE_SERVE_HOOK):
        result = fn(request, link, file)
        if isinstance(result, HttpResponseBase):
            record_event(request, link=link, file_id=file.pk, outcome="hook", handoff=handoff.nonce)
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
        record_event(
            request, link=link, file_id=file.pk, outcome="not_satisfiable", handoff=handoff.nonce
        )
        response416 = HttpResponse(status=416)
        response416["Content-Range"] = f"bytes */{stored.size}"
        _file_headers(response416, stored)
        return response416

    if is_head:
        response: HttpResponseBase = HttpResponse(content_type=stored.content_type)
        if byte_range is not None:
            response.status_code = 206
            response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{stored.size}"
        response["Content-Length"] = str(byte_range.length if byte_range else stored.size)
        record_event(request, link=link, file_id=file.pk, outcome="head", handoff=handoff.nonce)
    else:
        includes_first_byte = byte_range is None or byte_range.start == 0
        tracker = SendTracker()
        try:
            if includes_first_byte:
                event = reserve_download(request, link, file, handoff, now=now)
            else:
                event = record_event(
                    request, link=link, file_id=file.pk, outcome="served", handoff=handoff.nonce
                )
        except BaseException:
            stored.close()
            raise
        response = backend.respond(stored, byte_range, tracker)
        response._resource_closers.append(_finish(event, tracker))  # type: ignore[attr-defined]
    _file_headers(response, stored)
    download_served.send(sender=type(file), request=request, link=link, file=file)
    return response


def _file_headers(response: HttpResponseBase, stored: StoredFile) -> None:
    for name, value in FILE_RESPONSE_HEADERS.items():
        response[name] = value
    response["Content-Disposition"] = content_disposition(stored.filename)
    response["ETag"] = stored.etag
    if stored.last_modified is not None:
        response["Last-Modified"] = http_date(stored.last_modified.timestamp())
