"""Editors download a product's private file from the page editor; nobody else can."""

from __future__ import annotations

import posixpath

from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.cache import never_cache

from ..models.pages import product_file_models


@never_cache
def product_file(request: HttpRequest, name: str) -> FileResponse:
    for model in product_file_models():
        for product_file in model._default_manager.filter(file=name).select_related("page"):
            page = product_file.page  # type: ignore[attr-defined]
            if page.permissions_for_user(request.user).can_edit():
                try:
                    handle = product_file.file.open("rb")  # type: ignore[attr-defined]
                except FileNotFoundError:
                    raise Http404("The file is missing from storage.") from None
                response = FileResponse(
                    handle, as_attachment=True, filename=posixpath.basename(name)
                )
                response["X-Content-Type-Options"] = "nosniff"
                response["Content-Security-Policy"] = "default-src 'none'; sandbox"
                return response
    # The same answer whether the file does not exist or the editor may not see it.
    raise Http404
