"""Which version of a product file a buyer gets, and what the pages say about versions.

A product file row names its current upload; ``models.FileVersion`` keeps every upload it ever
named (recorded by the file's ``save``: published now or by ``publish_scheduled``). The
product's ``past_buyers_get`` decides what a purchase is served:

- ``latest`` (the default): the current upload, whenever the purchase was paid;
- ``bought``: the version that was current when the purchase was paid (the newest released at
  or before ``paid_at``); a file added to the product after the sale: its first version.

The buyer never names a version: hand-offs and buttons carry the file's id, and the version is
decided here, from the purchase, at every request. For the bytes, ``entitled_file`` gives the
product file itself, or a copy standing for the older version (its stored name, size, SHA-256
and CRC-32 swapped in, never saved), so every serving backend, "Download all", the ETag and
Range serve exactly that version's bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet

from .models import FileVersion, Purchase
from .models.pages import AbstractProductFile, ProductPageMixin

LATEST = ProductPageMixin.PastBuyersGet.LATEST
BOUGHT = ProductPageMixin.PastBuyersGet.BOUGHT


def policy_of(file: AbstractProductFile) -> str:
    """The file's product's policy; ``links`` reads it with the file (``past_buyers_get``
    set on the instance), else it is read from the page."""
    known = file.__dict__.get("past_buyers_get")
    if known is None:
        known = file.page.past_buyers_get  # type: ignore[attr-defined]
    return str(known)


def versions_of(page_id: Any, file_ids: Iterable[int] | None = None) -> QuerySet[FileVersion]:
    found = FileVersion.objects.filter(page_id=page_id)
    if file_ids is not None:
        found = found.filter(file_id__in=list(file_ids))
    return found.order_by("file_id", "number")


def choose(versions: list[FileVersion], purchase: Purchase, policy: str) -> FileVersion | None:
    """The version ``purchase`` is entitled to among one file's ``versions`` (oldest first)."""
    if not versions:
        return None
    if policy != BOUGHT or purchase.paid_at is None:
        return versions[-1]
    bought = [v for v in versions if v.created_at <= purchase.paid_at]
    return bought[-1] if bought else versions[0]


def entitled_version(purchase: Purchase, file: AbstractProductFile) -> FileVersion | None:
    """The version of ``file`` the purchase is served (None: the file has no version rows; its
    current upload is served)."""
    policy = policy_of(file)
    found = list(versions_of(file.page_id, [file.pk]))  # type: ignore[attr-defined]
    return choose(found, purchase, policy)


def as_version(file: AbstractProductFile, version: FileVersion | None) -> AbstractProductFile:
    """``file`` if ``version`` is its current upload (or None), else a copy standing for it."""
    if version is None or version.file.name == file.file.name:
        return file
    served = copy.copy(file)
    served.file = version.file.name  # type: ignore[assignment]  # the descriptor makes a FieldFile
    served.size, served.sha256, served.crc32 = version.size, version.sha256, version.crc32
    served.served_version = version  # type: ignore[attr-defined]  # save() refuses such a copy
    return served


def entitled_file(purchase: Purchase, file: AbstractProductFile) -> AbstractProductFile:
    """What serving sends for ``file`` on ``purchase``. Under ``latest`` no query is made."""
    if policy_of(file) != BOUGHT or purchase.paid_at is None:
        return file
    return as_version(file, entitled_version(purchase, file))


def entitled_files(
    purchase: Purchase, files: list[AbstractProductFile]
) -> list[AbstractProductFile]:
    """``entitled_file`` for several files of one product ("Download all"), in two queries at
    most."""
    if not files or purchase.paid_at is None:
        return files
    policy = policy_of(files[0])
    if policy != BOUGHT:
        return files
    return [item.file for item in for_purchase(purchase, files, policy)]


@dataclass(frozen=True)
class ServedFile:
    """A file as a buyer's page shows it: what is served and the version's number, date and
    notes (``version`` None: no version recorded)."""

    file: AbstractProductFile
    version: FileVersion | None


def for_purchase(
    purchase: Purchase, files: list[AbstractProductFile], policy: str
) -> list[ServedFile]:
    """Each of ``files`` as ``purchase`` is served it, in one query."""
    if not files:
        return []
    by_file: dict[int, list[FileVersion]] = {}
    for version in versions_of(files[0].page_id, [f.pk for f in files]):  # type: ignore[attr-defined]
        by_file.setdefault(version.file_id, []).append(version)
    served = []
    for file in files:
        chosen = choose(by_file.get(file.pk, []), purchase, policy)
        shown = as_version(file, chosen) if policy == BOUGHT else file
        served.append(ServedFile(shown, chosen))
    return served


def files_of_purchase(purchase: Purchase) -> list[ServedFile]:
    """The product's files as the library lists them for a paid ``purchase``."""
    page = purchase.product_page
    if page is None:
        return []
    return for_purchase(purchase, list(page.product_files), page.past_buyers_get)


# For the product editor and for telling past buyers ---------------------------------------------


def history(page: Any) -> list[tuple[AbstractProductFile, list[FileVersion]]]:
    """Each file of ``page`` with its versions, newest first (the editor's panel)."""
    files = list(page.files.all())
    by_file: dict[int, list[FileVersion]] = {}
    for version in versions_of(page.pk, [f.pk for f in files]):
        by_file.setdefault(version.file_id, []).insert(0, version)
    return [(file, by_file.get(file.pk, [])) for file in files]


def latest_versions(page: Any) -> list[FileVersion]:
    """The current version of each of ``page``'s files, in the editor's order, with notes."""
    return [versions[0] for _file, versions in history(page) if versions]


def released_since(page: Any, when: datetime) -> list[FileVersion]:
    """The versions of ``page``'s current files released after ``when``, oldest first: what an
    update message to past buyers would list. A file's first version counts too (a file added
    to the product)."""
    file_ids = [f.pk for f in page.files.all()]
    return list(versions_of(page.pk, file_ids).filter(created_at__gt=when).order_by("created_at"))
