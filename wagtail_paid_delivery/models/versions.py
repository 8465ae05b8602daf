"""Versions of a product file: every upload an editor published, with its facts and notes.

A product file row always names its current upload; each upload it ever named is a
``FileVersion`` (1, 2, 3… per file) whose stored bytes stay in private storage, so a past buyer
can be served the version the product's policy entitles them to (``versions``).
"""

from __future__ import annotations

import logging
from typing import Any

import swapper
from django.db import models
from django.db.models import Max
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..storage import get_product_storage

logger = logging.getLogger(__name__)


class FileVersionManager(models.Manager["FileVersion"]):
    def record(self, product_file: Any, *, new_upload: bool) -> FileVersion:
        """Called by a product file's ``save``: a new upload becomes the next version; otherwise
        the current version's notes follow the file's (an editor correcting a typo)."""
        mine = self.filter(page_id=product_file.page_id, file_id=product_file.pk)
        current = mine.order_by("-number").first()
        notes = product_file.release_notes or ""
        if current is not None and not new_upload and current.file.name == product_file.file.name:
            if current.notes != notes:
                mine.filter(pk=current.pk).update(notes=notes)
                current.notes = notes
            return current
        number = (mine.aggregate(last=Max("number"))["last"] or 0) + 1
        return self.create(
            page_id=product_file.page_id,
            file_id=product_file.pk,
            number=number,
            file=product_file.file.name,
            size=product_file.size,
            sha256=product_file.sha256,
            crc32=product_file.crc32,
            notes=notes,
        )


class FileVersion(models.Model):
    """One published upload of a product file."""

    page = models.ForeignKey(
        swapper.get_model_name("wagtailcore", "Page"),
        verbose_name=_("product"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    # The product file's id; product file models are site-defined, hence no foreign key.
    file_id = models.PositiveBigIntegerField(_("file id"))
    number = models.PositiveIntegerField(_("version"))
    file = models.FileField(_("file"), storage=get_product_storage, max_length=500)
    size = models.BigIntegerField(_("size in bytes"), default=0)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    crc32 = models.BigIntegerField(_("CRC-32"), null=True, blank=True)
    notes = models.TextField(_("release notes"), blank=True)
    created_at = models.DateTimeField(_("released"), default=timezone.now)

    objects = FileVersionManager()

    class Meta:
        verbose_name = _("file version")
        verbose_name_plural = _("file versions")
        ordering = ["page_id", "file_id", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["page", "file_id", "number"],
                name="wagtail_paid_delivery_one_version_number",
            )
        ]

    def __str__(self) -> str:
        return f"{self.file_id} v{self.number}"

    @property
    def size_display(self) -> str:
        return filesizeformat(self.size)


def backfill_versions(file_model: Any, version_model: Any, measure: Any) -> None:
    """Version 1 for every file of ``file_model`` without a version (the migration that brought
    versions: historical models), its size and hashes measured again from storage. A file
    storage does not have gets version 1 with size 0 and no hashes, and a warning."""
    for row in file_model._default_manager.all().order_by("pk"):
        if version_model._default_manager.filter(page_id=row.page_id, file_id=row.pk).exists():
            continue
        size, sha256, crc = measure(row.file) if row.file else (0, "", None)
        if sha256:
            file_model._default_manager.filter(pk=row.pk).update(
                size=size, sha256=sha256, crc32=crc
            )
        else:
            logger.warning(
                "Product file %s (id %s) is missing from storage: version 1 recorded without "
                "size or hash",
                row.file.name,
                row.pk,
            )
        version_model._default_manager.create(
            page_id=row.page_id,
            file_id=row.pk,
            number=1,
            file=row.file.name,
            size=size,
            sha256=sha256,
            crc32=crc,
            notes=getattr(row, "release_notes", ""),
        )
