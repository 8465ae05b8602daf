"""The "Download all" response: a product's files as one stored ZIP, counted once per file.

The same flow as :func:`serving.serve_file` for one file (the ``before_serve_paid_download``
hook, storage looked up before anything counts, Range and If-Range, reserve before the first
byte, release when nothing was sent, ``download_served``, a ``DownloadEvent`` per file), with
the archive's layout (``zipstream``) in place of a stored file.

Always streamed by this process, whatever ``SERVE_BACKEND`` says: nginx, Apache and presigned
URLs serve files that exist in storage, and this archive exists only as it is sent. The members
are read through the storage's own ``open`` (a remote storage is read over its API).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from wagtail import hooks

from .. import links, versions
from ..models import DownloadEvent, DownloadLink, FileVersion
from ..models.pages import AbstractProductFile, measure
from ..signals import download_served
from . import BEFORE_SERVE_HOOK, FILE_RESPONSE_HEADERS
from .backends import FileUnavailable, SendTracker
from .ranges import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    if_range_allows,
    parse_range,
)
from .zipstream import ArchiveTooLarge, Layout, Member

__all__ = ["ArchiveTooLarge", "MissingMember", "build_archive", "offer_size", "serve_archive"]

logger = logging.getLogger(__name__)

#: Changes when the layout's bytes would (part of every archive's ETag).
LAYOUT_VERSION = "zip-stored-1"


class MissingMember(FileUnavailable):
    """One of the archive's files is missing from storage (or storage failed)."""

    def __init__(self, file: AbstractProductFile) -> None:
        super().__init__(file.file.name or "")
        self.file = file


@dataclass(frozen=True)
class Archive:
    files: list[AbstractProductFile]
    layout: Layout
    etag: str
    filename: str


def build_archive(files: list[AbstractProductFile], title: str) -> Archive:
    """The archive of ``files`` (in this order), from their recorded facts.

    Raises :class:`MissingMember` for a file storage does not have, :class:`ArchiveTooLarge`
    past the classic ZIP format's limits. A file whose facts are missing (stored before CRC-32s
    were recorded and not backfilled) or whose recorded size differs from storage's (replaced
    behind the app's back) is measured again first, once, and saved.
    """
    members = []
    names = entry_names(files)
    for file, name in zip(files, names, strict=True):
        _ensure_measured(file)
        storage, stored_name = file.file.storage, file.file.name or ""
        members.append(Member(name, file.size, file.crc32 or 0, partial(storage.open, stored_name)))
    layout = Layout(members)
    facts = "\n".join(
        f"{member.name}\0{file.sha256}\0{member.size}\0{member.crc32}"
        for member, file in zip(members, files, strict=True)
    )
    digest = hashlib.sha256(f"{LAYOUT_VERSION}\n{facts}".encode()).hexdigest()
    return Archive(files, layout, f'"zip-{digest}"', f"{_safe_name(title) or 'download'}.zip")


def offer_size(files: list[AbstractProductFile]) -> int | None:
    """The size of the archive of ``files`` from their recorded facts, when the download page
    offers one: two files or more, within the classic ZIP format's limits. Reads no file."""
    if len(files) < 2:
        return None
    members = [
        Member(name, file.size, 0, partial(file.file.open, "rb"))
        for file, name in zip(files, entry_names(files), strict=True)
    ]
    try:
        return Layout(members).size
    except ArchiveTooLarge:
        return None


def _ensure_measured(file: AbstractProductFile) -> None:
    storage, name = file.file.storage, file.file.name or ""
    try:
        if not name:
            raise FileNotFoundError("no file recorded")
        stored_size = storage.size(name)
    except OSError as error:
        logger.error(
            "Product file %s (%r, id %s) cannot be archived: %s", name, file.title, file.pk, error
        )
        raise MissingMember(file) from error
    if file.crc32 is not None and file.sha256 and file.size == stored_size:
        return
    size, sha256, crc = measure(file.file)
    if crc is None:
        raise MissingMember(file)
    # The rows describing these stored bytes: the product file's while it names them, and the
    # version's (``file`` may stand for an older version).
    type(file)._default_manager.filter(pk=file.pk, file=name).update(
        size=size, sha256=sha256, crc32=crc
    )
    FileVersion.objects.filter(file_id=file.pk, file=name).update(
        size=size, sha256=sha256, crc32=crc
    )
    file.size, file.sha256, file.crc32 = size, sha256, crc


def entry_names(files: list[AbstractProductFile]) -> list[str]:
    """Each file's name inside the archive: its stored name, made safe (no folders, no control
    characters), and distinct ("report (2).pdf"), compared as unpackers on case-insensitive
    file systems would."""
    names: list[str] = []
    taken: set[str] = set()
    for file in files:
        name = _safe_name(file.filename) or "file"
        stem, dot, extension = name.rpartition(".")
        if not dot or not stem:
            stem, dot, extension = name, "", ""
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{stem} ({number}){dot}{extension}"
        taken.add(candidate.casefold())
        names.append(candidate)
    return names


def _safe_name(name: str) -> str:
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r'[/\\:*?"<>|]', "_", name)
    return name.strip(" .")[:200]


def serve_archive(
    request: HttpRequest,
    link: DownloadLink,
    files: list[AbstractProductFile],
    handoff: links.ArchiveHandoff,
    *,
    now: datetime | None = None,
) -> HttpResponseBase:
    """The archive response for a checked link's ``files``.

    Raises :class:`MissingMember`, :class:`ArchiveTooLarge` (nothing counted) or
    ``links.LinkUsedUp``. The caller checked the link and that the files are its product's.
    Each member holds the version the purchase is entitled to (``versions``).
    """
    files = versions.entitled_files(link.purchase, files)
    for file in files:
        for fn in hooks.get_hooks(BEFORE_SERVE_HOOK):
            result = fn(request, link, file)
            if isinstance(result, HttpResponseBase):
                _record_each(request, link, files, handoff, "hook")
                return result

    archive = build_archive(files, link.purchase.product_title)
    size = archive.layout.size
    try:
        byte_range = None
        if if_range_allows(request.headers.get("If-Range"), archive.etag, None):
            byte_range = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        _record_each(request, link, files, handoff, "not_satisfiable")
        response416 = HttpResponse(status=416)
        response416["Content-Range"] = f"bytes */{size}"
        _headers(response416, archive)
        return response416

    promised = byte_range.length if byte_range else size
    response: HttpResponseBase
    if request.method == "HEAD":
        links.check_archive(link, files, handoff, promised=promised, size=size, now=now)
        response = HttpResponse(content_type="application/zip")
        _range_headers(response, byte_range, size)
        _record_each(request, link, files, handoff, "head")
    else:
        events = links.reserve_archive(
            request, link, files, handoff, promised=promised, size=size, now=now
        )
        tracker = SendTracker()
        first, last = (byte_range.start, byte_range.end) if byte_range else (0, size - 1)
        response = StreamingHttpResponse(
            _tracked(archive.layout.read(first, last), tracker),
            status=206 if byte_range else 200,
            content_type="application/zip",
        )
        _range_headers(response, byte_range, size)
        closer = _finish(events, archive, first, tracker)
        response._resource_closers.append(closer)  # type: ignore[attr-defined]
    _headers(response, archive)
    for file in files:
        download_served.send(sender=type(file), request=request, link=link, file=file)
    return response


def _tracked(chunks: Iterator[bytes], tracker: SendTracker) -> Iterator[bytes]:
    for chunk in chunks:
        tracker.offer(len(chunk))
        yield chunk
    tracker.done()


def _finish(
    events: list[DownloadEvent], archive: Archive, first: int, tracker: SendTracker
) -> Callable[[], None]:
    """When the response closes: give every count back if nothing was sent, else record each
    file's share of the bytes sent (its local header and data; the last file's, the directory)."""

    def close() -> None:
        try:
            if tracker.nothing_sent:
                for event in events:
                    if event.counted:
                        links.release_download(event)
                return
            sent_end = first + tracker.sent
            spans = archive.layout.member_spans()
            for event, (_, start, end) in zip(events, spans, strict=True):
                links.record_bytes_sent(event, max(0, min(end, sent_end) - max(start, first)))
        except Exception:  # closing must never break the server's cleanup
            logger.exception("Could not finish archive download events %s", [e.pk for e in events])

    return close


def _record_each(
    request: HttpRequest,
    link: DownloadLink,
    files: list[AbstractProductFile],
    handoff: links.ArchiveHandoff,
    outcome: str,
) -> None:
    for file in files:
        links.record_event(
            request, link=link, file_id=file.pk, outcome=outcome, handoff=handoff.member(file).nonce
        )


def _range_headers(response: HttpResponseBase, byte_range: ByteRange | None, size: int) -> None:
    if byte_range is not None:
        response.status_code = 206
        response["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    response["Content-Length"] = str(byte_range.length if byte_range else size)


def _headers(response: HttpResponseBase, archive: Archive) -> None:
    for name, value in FILE_RESPONSE_HEADERS.items():
        response[name] = value
    response["Content-Disposition"] = content_disposition(archive.filename)
    response["ETag"] = archive.etag
