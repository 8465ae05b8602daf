"""HTTP details of a file response: Range, If-Range and Content-Disposition."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from django.utils.http import parse_http_date_safe


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


# One spelling only: digits without leading zeros, no spaces, no list. Servers differ on the rest
# (nginx skips spaces, Apache also reads Request-Range), so anything else is not vouched for.
_PLAIN_RANGE_RE = re.compile(r"^bytes=(?:([1-9][0-9]{0,17})-([0-9]{0,18})|-([1-9][0-9]{0,17}))$")


def is_single_range_after_first_byte(header: str | None, size: int) -> bool:
    """Whether ``header`` asks, spelled the way every server reads alike, for one satisfiable
    range that starts after byte 0 of a ``size``-byte file (``bytes=100-``, ``bytes=100-199``,
    or a suffix shorter than the file).

    Offload servers (nginx, Apache) read the request's Range themselves: only this shape lets the
    app know in advance which bytes they will send.
    """
    match = _PLAIN_RANGE_RE.match(header or "")
    if not match:
        return False
    first, last, suffix = match.groups()
    if suffix:
        return int(suffix) < size
    start = int(first)
    return start < size and (not last or int(last) >= start)


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


@functools.lru_cache(maxsize=256)  # the same few names on every download
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
