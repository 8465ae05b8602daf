"""Private storage for product files.

Files are written with django-private-storage under ``PRIVATE_STORAGE_ROOT``. Their ``url()`` is
our own permission-checked admin view (``admin/files.py``), so a storage URL never serves a
file to a buyer or a stranger: buyers get bytes only through a download link.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from django.conf import settings
from django.core.files.storage import Storage
from django.urls import reverse
from django.utils.deconstruct import deconstructible
from django.utils.module_loading import import_string
from django.utils.text import get_valid_filename
from private_storage.storage.files import PrivateFileSystemStorage

from .conf import app_settings

#: Canned ACLs that let someone other than the bucket's owner read an object.
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})


@deconstructible
class PrivateProductStorage(PrivateFileSystemStorage):
    """PrivateFileSystemStorage whose URLs point at the editors' permission-checked view."""

    def __init__(self, location: str | None = None, **kwargs: Any) -> None:
        # django-private-storage reads PRIVATE_STORAGE_ROOT at import; read it when used instead.
        super().__init__(location=location or settings.PRIVATE_STORAGE_ROOT, **kwargs)

    def url(self, name: str | None) -> str:
        return reverse("wagtail_paid_delivery_admin:product_file", args=[name])


def get_product_storage() -> Storage:
    """The storage product files use; the ``STORAGE`` setting may name another (S3 and so on).

    Passed to the FileField as a callable, so changing it needs no migration.
    """
    factory = app_settings.STORAGE
    if isinstance(factory, str):
        factory = import_string(factory)
    return factory()


def product_file_upload_to(instance: Any, filename: str) -> str:
    """A random folder per upload: names cannot be guessed and never collide."""
    name = get_valid_filename(posixpath.basename(filename)) or "file"
    return f"products/{uuid.uuid4().hex}/{name}"


def public_acl(storage: Storage) -> str | None:
    """The public canned ACL ``storage`` writes every object with (django-storages' S3Storage:
    ``default_acl``, or ``object_parameters["ACL"]``, which wins); None when it writes none.

    A product file written so is readable by anyone at its plain, permanent URL, whatever the
    download links say.
    """
    acl = (getattr(storage, "object_parameters", None) or {}).get("ACL") or getattr(
        storage, "default_acl", None
    )
    return acl if acl in PUBLIC_ACLS else None


def storage_errors() -> tuple[type[Exception], ...]:
    """What a storage raises when it cannot answer: OSError for files on disk; for S3 also
    botocore's errors (a 403, a timeout, an endpoint that is down), which are not OSErrors."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # django-storages' S3 extra is not installed: no S3 storage either
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)
