"""The product editor's read-only panels (in ``ProductPageMixin.product_panels``): "Sales and
downloads" (statistics from ``product_stats``) and "Update notices sent" (progress from
``updates``), which only superusers and editors who may view purchases see, and "File versions"
(from ``versions``; every editor of the page)."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from wagtail.admin.panels import Panel

from . import permissions


class ProductSalesPanel(Panel):
    """Sales count, revenue per currency, refunds, grants and downloads per file."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("heading", _("Sales and downloads"))
        super().__init__(**kwargs)

    class BoundPanel(Panel.BoundPanel):
        template_name = "wagtail_paid_delivery/admin/panels/product_sales.html"

        def is_shown(self) -> bool:
            instance = self.instance
            return bool(getattr(instance, "pk", None)) and permissions.may_view_purchases(
                getattr(self.request, "user", None)
            )

        def get_context_data(self, parent_context: Any = None) -> Any:
            # Imported when rendered, as Wagtail's own page-model hooks do: the page model
            # imports this panel, and the statistics read the purchase models.
            from . import product_stats

            context = super().get_context_data(parent_context)
            context["stats"] = product_stats.product_stats(self.instance)
            return context


class FileVersionsPanel(Panel):
    """Each file's published versions, newest first: number, date, size, SHA-256, notes."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("heading", _("File versions"))
        super().__init__(**kwargs)

    class BoundPanel(Panel.BoundPanel):
        template_name = "wagtail_paid_delivery/admin/panels/file_versions.html"

        def is_shown(self) -> bool:
            return bool(getattr(self.instance, "pk", None))

        def get_context_data(self, parent_context: Any = None) -> Any:
            from . import versions  # imported when rendered: see ProductSalesPanel

            context = super().get_context_data(parent_context)
            context["history"] = versions.history(self.instance)
            context["policy"] = self.instance.get_past_buyers_get_display()
            return context


class UpdateNoticesPanel(Panel):
    """Each update notice of the product: when, what, how far its sending got, what failed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("heading", _("Update notices sent"))
        super().__init__(**kwargs)

    class BoundPanel(Panel.BoundPanel):
        template_name = "wagtail_paid_delivery/admin/panels/update_notices.html"

        def is_shown(self) -> bool:
            instance = self.instance
            return bool(getattr(instance, "pk", None)) and permissions.may_view_purchases(
                getattr(self.request, "user", None)
            )

        def get_context_data(self, parent_context: Any = None) -> Any:
            from . import updates  # when rendered: the page model imports this panel

            context = super().get_context_data(parent_context)
            context["notices"] = updates.progress_of_product(self.instance)
            return context
