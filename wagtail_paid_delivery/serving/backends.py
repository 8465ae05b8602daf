"""How the bytes leave: streamed by Django, or offloaded to nginx, Apache or presigned URLs.

Checks and counting happen before a backend is asked (``serving.serve_file``); each backend
says what a request will be sent (:meth:`DjangoBackend.terms`), which is what counting needs. The
Django backend streams from this process, knows exactly what it sends and can tell when a response
sent nothing; the offload backends (``SERVE_BACKEND``) hand the bytes to someone else, who reads
the request's own Range and If-Range, and so never can.
"""

from __future__ import annotations

import abc
import functools
import inspect
import logging
import mimetypes
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from ..conf import app_settings
from ..models.pages import AbstractProductFile
from ..storage import storage_errors
from .ranges import ByteRange, content_disposition, is_single_range_after_first_byte

logger = logging.getLogger(__name__)

#: Bytes read from storage and handed to the server at a time.
CHUNK_SIZE = 64 * 1024


class FileUnavailable(Exception):
    """The file is missing from storage (or storage failed): nobody can download it now."""


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


@dataclass(frozen=True)
class Terms:
    """What a GET will be sent, as far as counting is concerned."""

    #: Bytes the response promises (its Content-Length; for an offload, the most the server
    #: may send): what the hand-off's byte budget is charged with.
    promised: int
    #: Whether, as a later request on a counted hand-off, it may go free (within the window and
    #: the budget). False: it counts like a new download.
    may_be_free: bool


class ServingBackend(Protocol):
    """How the bytes leave. Checks and counting happen before a backend is asked."""

    #: Whether :attr:`SendTracker` can learn that a response sent nothing.
    can_tell_nothing_sent: bool

    def locate(self, file: AbstractProductFile, *, open_file: bool) -> StoredFile: ...

    def redirect_origins(self, files: Iterable[AbstractProductFile]) -> list[str]:
        """Origins other than this site's that hand-offs of ``files`` send the browser to.

        The download page's Content-Security-Policy allows its button's form (whose 303 leads to
        the hand-off) to end there: browsers check ``form-action`` on every redirect.
        """
        ...

    def terms(
        self, request: HttpRequest, stored: StoredFile, byte_range: ByteRange | None
    ) -> Terms: ...

    def respond(
        self, stored: StoredFile, byte_range: ByteRange | None, tracker: SendTracker
    ) -> HttpResponseBase: ...


def _plain_local(storage: Any) -> bool:
    """Whether ``storage`` is Django's file system storage as shipped (no method of the three a
    lookup uses overridden), so an open file's ``fstat`` answers what they would."""
    kind = type(storage)
    return (
        isinstance(storage, FileSystemStorage)
        and kind.size is FileSystemStorage.size
        and kind.get_modified_time is FileSystemStorage.get_modified_time
        and kind.open is FileSystemStorage.open
    )


def _stat(handle: IO[bytes]) -> tuple[int, datetime]:
    found = os.fstat(handle.fileno())
    # As FileSystemStorage.get_modified_time: aware in UTC when USE_TZ.
    zone = UTC if settings.USE_TZ else None
    return found.st_size, datetime.fromtimestamp(found.st_mtime, tz=zone)


class DjangoBackend:
    """Bytes streamed by this process from the product file's storage, in constant memory.

    Whole files go out as a :class:`FileResponse` over the storage's own file object, so WSGI
    servers can use ``wsgi.file_wrapper`` (sendfile). Ranges are a generator that seeks once and
    reads :data:`CHUNK_SIZE` at a time.
    """

    can_tell_nothing_sent = True

    def redirect_origins(self, files: Iterable[AbstractProductFile]) -> list[str]:
        """Other origins a hand-off of these files redirects the browser to: none, here."""
        return []

    def locate(self, file: AbstractProductFile, *, open_file: bool) -> StoredFile:
        storage, name = file.file.storage, file.file.name or ""
        last_modified: datetime | None
        handle: Any
        try:
            if not name:
                raise FileNotFoundError("no file recorded")
            if open_file and _plain_local(storage):
                # One open and one fstat: the size and time of the very file about to be sent.
                handle = storage.open(name, "rb")
                try:
                    size, last_modified = _stat(handle)
                except OSError:
                    handle.close()
                    raise
            else:
                size = storage.size(name)
                try:
                    last_modified = storage.get_modified_time(name)
                except (NotImplementedError, AttributeError):
                    last_modified = None
                handle = storage.open(name, "rb") if open_file else None
        except storage_errors() as error:  # not found, permissions, a storage that is down
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

    def terms(
        self, request: HttpRequest, stored: StoredFile, byte_range: ByteRange | None
    ) -> Terms:
        # This process resolved Range and If-Range itself: it sends exactly ``byte_range``.
        return Terms(byte_range.length if byte_range else stored.size, may_be_free=True)

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

    What changes (docs/architecture.md, "What counts as a download"): every request reaches
    this app first, so it is counted (or refused) before the server sends anything. But the
    server reads the request's Range and If-Range itself (and compares If-Range with its own
    ETag, not ours), so a later request on a hand-off goes free only when the app can tell
    what the server will send: one range after byte 0, spelled plainly, without If-Range.
    Anything else counts like a new download, and is charged the whole file. Releasing a count
    when nothing was sent cannot hold either: the bytes leave elsewhere, so a counted request is
    kept counted (``tracker.unknown``) and ``bytes_sent`` stays unknown. HEAD, 416 and refusals
    are still answered by Django itself.
    """

    can_tell_nothing_sent = False

    def terms(
        self, request: HttpRequest, stored: StoredFile, byte_range: ByteRange | None
    ) -> Terms:
        plain = not request.headers.get("If-Range") and is_single_range_after_first_byte(
            request.headers.get("Range"), stored.size
        )
        if plain and byte_range is not None:
            return Terms(byte_range.length, may_be_free=True)
        return Terms(stored.size, may_be_free=False)

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


def _parameters(function: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return frozenset()


_function_parameters = functools.cache(_parameters)


def url_parameters(storage: Any) -> frozenset[str]:
    """The names ``storage.url()`` takes, read once per ``url`` function (each download asks)."""
    url = storage.url
    function = getattr(url, "__func__", None)  # a bound method: its class's function
    if function is None:
        return _parameters(url)
    return _function_parameters(function)


def presign_problem(storage: Any) -> str | None:
    """Why ``storage`` cannot give the presigned backend a short-lived, signed URL; None if it
    can.

    django-storages' S3Storage signs ``url()`` with ``expire`` only while ``querystring_auth`` is
    on and no ``custom_domain`` without a CloudFront signer bypasses the signing: otherwise its
    URL is the object's plain, permanent address, which works only for a public object. A
    storage whose ``url()`` takes no ``expire`` cannot be asked for a short URL at all.
    """
    if "expire" not in url_parameters(storage):
        return "its url() takes no 'expire': it cannot make a short-lived URL"
    if getattr(storage, "querystring_auth", True) is False:
        return "its querystring_auth is False: url() is unsigned and never expires"
    if getattr(storage, "custom_domain", None) and not getattr(storage, "cloudfront_signer", None):
        return "it has a custom_domain without a CloudFront signer: url() is unsigned"
    return None


class PresignedBackend(_OffloadBackend):
    """A 302 to a presigned storage URL that lives ``PRESIGNED_URL_LIFETIME`` seconds.

    For remote storages such as django-storages' S3Storage, whose ``url()`` signs with
    ``expire`` and passes ``parameters`` to S3 (``ResponseContentDisposition`` and
    ``ResponseContentType``, so the file still downloads under its name: they are signed with
    the URL, so nobody can change them). A storage that would not sign a short-lived URL
    (:func:`presign_problem`) is refused before anything is counted.

    Every redirect counts: the storage serves any range, any number of times, while the URL
    lives, so nothing the request asked for bounds what it gets.
    """

    def terms(
        self, request: HttpRequest, stored: StoredFile, byte_range: ByteRange | None
    ) -> Terms:
        return Terms(stored.size, may_be_free=False)

    def prepare(self, stored: StoredFile) -> None:
        storage = stored.extra["storage"]
        problem = presign_problem(storage)
        if problem:
            raise FileUnavailable(f"SERVE_BACKEND 's3' refuses the product storage: {problem}")
        stored.extra["url_parameters"] = "parameters" in url_parameters(storage)

    def redirect_origins(self, files: Iterable[AbstractProductFile]) -> list[str]:
        # The storage's origin, from one URL signed per storage (signing is local: no request).
        origins: list[str] = []
        seen: set[int] = set()
        for file in files:
            storage: Any = file.file.storage  # a presigning storage's url() takes expire
            if id(storage) in seen or not file.file.name:
                continue
            seen.add(id(storage))
            try:
                url = storage.url(file.file.name, expire=int(app_settings.PRESIGNED_URL_LIFETIME))
            except Exception:  # noqa: S112 (a storage that cannot presign is refused when served)
                continue
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            if parts.scheme in ("http", "https") and parts.netloc and origin not in origins:
                origins.append(origin)
        return origins

    def offload(self, response: HttpResponse, stored: StoredFile) -> None:
        kwargs: dict[str, Any] = {"expire": int(app_settings.PRESIGNED_URL_LIFETIME)}
        if stored.extra["url_parameters"]:
            # Signed into the URL: the storage answers with these headers, and a URL edited to
            # ask for others (inline, text/html) no longer matches its signature.
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
