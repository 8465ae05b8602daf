"""A ZIP archive laid out before any byte is read, and read from any offset.

"Download all" sends a product's files as one ZIP built on the fly. Entries are *stored* (no
compression) with the CRC-32 and size recorded when each file was uploaded, and every entry has
the same fixed time, so the archive's every byte is known in advance from those facts alone:
its size (Content-Length), its ETag, and where each member's data starts. A Range or a resume is
then served by seeking into the member it starts in; earlier members are never read.

Written with ``struct`` from the ZIP specification (PKWARE APPNOTE 6.3, sections 4.3 and 4.4):
Python's ``zipfile`` computes CRCs by reading the data and writes sequentially, and no
third-party library is needed. The layout per member is a local file header with the name, then
the data (no data descriptor: CRC and sizes are known up front); then the central directory
and its end record. Names are UTF-8, with general purpose bit 11 set when not ASCII.

No ZIP64: an archive is refused (:class:`ArchiveTooLarge`) when it would reach 4 GiB or 65,535
entries, where the classic format's fields end; each file can still be downloaded on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

#: The classic format's 32-bit sizes and offsets; 0xFFFFFFFF itself means "see ZIP64".
MAX_ARCHIVE_SIZE = 0xFFFFFFFF - 1
#: Its 16-bit entry count; 0xFFFF itself means "see ZIP64".
MAX_MEMBERS = 0xFFFF - 1
#: 1980-01-01 00:00:00, the earliest MS-DOS time: every entry's time, so the bytes never change.
DOS_TIME, DOS_DATE = 0, (0 << 9) | (1 << 5) | 1
#: Version 1.0 suffices to extract a stored entry; "made by" Unix 2.0 so attributes are modes.
VERSION_NEEDED, VERSION_MADE_BY = 10, (3 << 8) | 20
#: A regular file, rw-r--r--.
EXTERNAL_ATTRIBUTES = 0o100644 << 16
UTF8_FLAG = 0x800
STORED = 0

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
LOCAL_SIGNATURE, CENTRAL_SIGNATURE, END_SIGNATURE = 0x04034B50, 0x02014B50, 0x06054B50

#: Bytes read from a member at a time.
CHUNK_SIZE = 64 * 1024


class ArchiveTooLarge(Exception):
    """The archive would need ZIP64 (4 GiB or more, or too many entries)."""


@dataclass(frozen=True)
class Member:
    """One file of the archive, described by facts measured earlier."""

    name: str
    size: int
    crc32: int
    #: Opens the member's bytes: a binary file object that can seek (a storage's ``open``).
    open: Callable[[], IO[bytes]]


@dataclass(frozen=True)
class Piece:
    """A stretch of the archive: header bytes held in memory, or one member's data."""

    start: int
    length: int
    header: bytes = b""
    member: Member | None = None

    @property
    def end(self) -> int:
        return self.start + self.length


class Layout:
    """Where every byte of the archive of ``members`` (in this order) lies."""

    def __init__(self, members: Sequence[Member]) -> None:
        if len(members) > MAX_MEMBERS:
            raise ArchiveTooLarge(f"{len(members)} entries")
        self.members = list(members)
        pieces: list[Piece] = []
        central = b""
        offset = 0
        for member in self.members:
            name, flags = _encoded_name(member.name)
            local = _LOCAL.pack(
                LOCAL_SIGNATURE,
                VERSION_NEEDED,
                flags,
                STORED,
                DOS_TIME,
                DOS_DATE,
                member.crc32,
                member.size,
                member.size,
                len(name),
                0,
            )
            header = local + name
            central += _central_record(member, name, flags, offset)
            pieces.append(Piece(offset, len(header), header=header))
            offset += len(header)
            pieces.append(Piece(offset, member.size, member=member))
            offset += member.size
            _check_size(offset)
        end = _END.pack(
            END_SIGNATURE, 0, 0, len(self.members), len(self.members), len(central), offset, 0
        )
        pieces.append(Piece(offset, len(central) + len(end), header=central + end))
        self.size = offset + len(central) + len(end)
        _check_size(self.size)
        self.pieces = pieces

    def member_spans(self) -> list[tuple[Member, int, int]]:
        """Each member with the archive bytes that belong to it: its local header and data
        (``start``, ``end`` exclusive). The central directory belongs to the last member."""
        spans: list[tuple[Member, int, int]] = []
        start = 0
        for piece in self.pieces:
            if piece.member is not None:
                spans.append((piece.member, start, piece.end))
                start = piece.end
        if spans:
            member, first, _ = spans[-1]
            spans[-1] = (member, first, self.size)
        return spans

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The archive's bytes from ``start`` to ``end`` (inclusive, as in Content-Range).

        Only the members the range overlaps are opened, each once, with one seek.
        """
        stop = end + 1
        for piece in self.pieces:
            if not piece.length or piece.end <= start or piece.start >= stop:
                continue
            first, last = max(start, piece.start), min(stop, piece.end)
            if piece.member is None:
                yield piece.header[first - piece.start : last - piece.start]
            else:
                yield from _read_member(piece.member, first - piece.start, last - first)


def _read_member(member: Member, offset: int, length: int) -> Iterator[bytes]:
    with member.open() as handle:
        if offset:
            handle.seek(offset)
        while length > 0:
            chunk = handle.read(min(CHUNK_SIZE, length))
            if not chunk:
                # Shorter than its recorded size: the archive would be corrupt. Stop here; the
                # client sees a short body against its Content-Length and does not keep it.
                raise OSError(f"{member.name} ended {length} bytes early")
            length -= len(chunk)
            yield chunk


def _central_record(member: Member, name: bytes, flags: int, offset: int) -> bytes:
    return (
        _CENTRAL.pack(
            CENTRAL_SIGNATURE,
            VERSION_MADE_BY,
            VERSION_NEEDED,
            flags,
            STORED,
            DOS_TIME,
            DOS_DATE,
            member.crc32,
            member.size,
            member.size,
            len(name),
            0,
            0,
            0,
            0,
            EXTERNAL_ATTRIBUTES,
            offset,
        )
        + name
    )


def _encoded_name(name: str) -> tuple[bytes, int]:
    if name.isascii():
        return name.encode("ascii"), 0
    return name.encode("utf-8"), UTF8_FLAG


def _check_size(size: int) -> None:
    if size > MAX_ARCHIVE_SIZE:
        raise ArchiveTooLarge(f"{size} bytes")
