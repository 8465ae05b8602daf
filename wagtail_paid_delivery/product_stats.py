"""What one product sold and how its files were downloaded, for the product editor's panel
(``panels.ProductSalesPanel``), and which of its files paid buyers own (the warning when one is
removed).

A file removed from a product disappears from every download page, past buyers' included:
download pages list the product's files as they are now (``links.product_files``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, Sum
from django.utils.translation import ngettext

from . import currencies
from .models import DownloadEvent, Purchase

S = Purchase.Status
#: Purchases that hold access (or may get it back): their buyers own the product's files.
OWNING_STATUSES = (S.PAID, S.DISPUTED)


@dataclass
class FileDownloads:
    file_id: int
    title: str
    #: Downloads counted (what the limit counts), and requests refused.
    counted: int = 0
    refused: int = 0
    #: False for a file no longer on the product.
    current: bool = True


@dataclass
class ProductStats:
    #: Purchases paid through Stripe (refunded ones included: they were sales).
    sales: int = 0
    #: Currency → (gross, refunded, net) as formatted money.
    revenue: list[dict[str, str]] = field(default_factory=list)
    #: Purchases refunded in full or in part.
    refunds: int = 0
    #: Complimentary copies granted by editors.
    grants: int = 0
    #: Buyers who hold access now (paid or suspended).
    owners: int = 0
    files: list[FileDownloads] = field(default_factory=list)


def product_stats(page: Any) -> ProductStats:
    """Sales, revenue per currency, refunds and downloads per file of ``page``."""
    purchases = Purchase.objects.filter(product_id=page.pk)
    sold = purchases.filter(paid_at__isnull=False, source=Purchase.Source.CHECKOUT)
    stats = ProductStats(
        sales=sold.count(),
        refunds=sold.filter(Q(amount_refunded__gt=0) | Q(status=S.REFUNDED)).count(),
        grants=purchases.filter(source=Purchase.Source.GRANT).count(),
        owners=purchases.filter(status__in=OWNING_STATUSES).count(),
    )
    for row in (
        sold.values("currency")
        .annotate(gross=Sum("amount"), refunded=Sum("amount_refunded"))
        .order_by("currency")
    ):
        code, gross, refunded = row["currency"], row["gross"] or 0, row["refunded"] or 0
        stats.revenue.append(
            {
                "currency": code.upper(),
                "gross": currencies.format_price(gross, code),
                "refunded": currencies.format_price(refunded, code),
                "net": currencies.format_price(gross - refunded, code),
            }
        )
    stats.files = file_downloads(page)
    return stats


def file_downloads(page: Any) -> list[FileDownloads]:
    """Downloads per file: the product's current files in order, then removed ones."""
    rows = {
        f.pk: FileDownloads(int(f.pk or 0), str(f.title) or f.filename) for f in page.files.all()
    }
    counts = (
        DownloadEvent.objects.filter(link__purchase__product_id=page.pk, file_id__isnull=False)
        .values("file_id")
        .annotate(counted=Count("pk", filter=Q(counted=True)), total=Count("pk"))
        .order_by("file_id")
    )
    for row in counts:
        file_id = int(row["file_id"] or 0)
        item = rows.setdefault(file_id, FileDownloads(file_id, f"#{file_id}", current=False))
        item.counted = row["counted"]
        item.refused = row["total"] - row["counted"]
    return list(rows.values())


def owned_files(page: Any, file_ids: set[int]) -> bool:
    """Whether paid buyers own ``page``'s files or have downloaded any of ``file_ids``."""
    if not file_ids:
        return False
    owners = Purchase.objects.filter(product_id=page.pk, status__in=OWNING_STATUSES)
    downloaded = DownloadEvent.objects.filter(
        link__purchase__product_id=page.pk, file_id__in=file_ids, counted=True
    )
    return owners.exists() or downloaded.exists()


def removal_warning(titles: list[str]) -> str:
    """What removing files paid buyers own means, for the editor."""
    return ngettext(
        "You removed %(titles)s, a file paid buyers own. Once this version is published it "
        "disappears from every download page, also for those who paid before: they can no longer "
        "download it, and new buyers do not get it. Add the file again to give it back.",
        "You removed %(titles)s, files paid buyers own. Once this version is published they "
        "disappear from every download page, also for those who paid before: they can no longer "
        "download them, and new buyers do not get them. Add the files again to give them back.",
        len(titles),
    ) % {"titles": ", ".join(f"“{t}”" for t in titles)}
