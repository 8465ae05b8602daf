"""The page editor's "Buyers only" setting: one page, which product's buyers may see it.

Reached from the "…" menu of any page's header (``wagtail_hooks``), and from the "Shop →
Buyers-only pages" listing of every restriction. Who may set it: whoever may set the page's
own privacy (Wagtail's ``can_set_view_restrictions``, i.e. publish permission).
"""

from __future__ import annotations

from typing import Any

import swapper
from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.generic import TemplateView
from wagtail.admin import messages
from wagtail.admin.menu import MenuItem
from wagtail.admin.views.generic.base import WagtailAdminTemplateMixin
from wagtail.admin.widgets import AdminPageChooser
from wagtail.log_actions import log

from ..models import BuyersOnlyRestriction
from ..models.pages import product_page_models

URL_NAME = "wagtail_paid_delivery_admin:buyers_only"
INDEX_URL_NAME = "wagtail_paid_delivery_admin:buyers_only_index"
#: Log actions on the page's history.
SET = "wagtail_paid_delivery.buyers_only.set"
REMOVED = "wagtail_paid_delivery.buyers_only.remove"


def may_set(user: Any, page: Any) -> bool:
    return bool(page.permissions_for_user(user).can_set_view_restrictions())


class BuyersOnlyForm(forms.Form):
    product = forms.ModelChoiceField(
        queryset=swapper.load_model("wagtailcore", "Page").objects.none(),
        label=_("Only buyers of"),
        help_text=_(
            "This page and the pages below it are shown only to buyers of this product, signed "
            "in through the library. Everyone else sees the product's page with its buy button."
        ),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        models = product_page_models()
        page_model = swapper.load_model("wagtailcore", "Page")
        field = self.fields["product"]
        field.queryset = page_model.objects.type(*models)  # type: ignore[attr-defined]
        field.widget = AdminPageChooser(target_models=models)


class BuyersOnlyView(WagtailAdminTemplateMixin, TemplateView):
    template_name = "wagtail_paid_delivery/admin/buyers_only.html"
    page_title = _("Buyers only")
    header_icon = "lock"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        page_model = swapper.load_model("wagtailcore", "Page")
        self.page = get_object_or_404(page_model, pk=kwargs["page_id"]).specific
        if not may_set(request.user, self.page):
            raise PermissionDenied
        self.restriction = BuyersOnlyRestriction.objects.filter(page=self.page).first()
        return super().dispatch(request, *args, **kwargs)

    def get_page_subtitle(self) -> str:
        return self.page.get_admin_display_title()

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        edit_url = reverse("wagtailadmin_pages:edit", args=[self.page.pk])
        return [
            *self.breadcrumbs_items,
            {"url": edit_url, "label": self.page.get_admin_display_title()},
            {"url": "", "label": self.get_page_title()},
        ]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        initial = {"product": self.restriction.product_id} if self.restriction else {}
        context.update(
            {
                "form": kwargs.get("form") or BuyersOnlyForm(initial=initial),
                "restriction": self.restriction,
                "inherited": self.inherited(),
                "action_url": self.request.path,
                "edit_url": reverse("wagtailadmin_pages:edit", args=[self.page.pk]),
            }
        )
        return context

    def inherited(self) -> list[BuyersOnlyRestriction]:
        """Restrictions on the page's ancestors, which apply here whatever this page says."""
        return list(
            BuyersOnlyRestriction.objects.filter(page__in=self.page.get_ancestors()).select_related(
                "page", "product"
            )
        )

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        edit_url = reverse("wagtailadmin_pages:edit", args=[self.page.pk])
        if request.POST.get("action") == "remove":
            if self.restriction is not None:
                self.restriction.delete()
                log(instance=self.page, action=REMOVED, user=request.user)
            messages.success(request, _("Buyers only: removed. The page is shown as before."))
            return redirect(edit_url)
        form = BuyersOnlyForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form))
        product = form.cleaned_data["product"]
        user = request.user if request.user.is_authenticated else None
        BuyersOnlyRestriction.objects.update_or_create(
            page=self.page, defaults={"product": product, "updated_by": user}
        )
        log(
            instance=self.page,
            action=SET,
            user=request.user,
            data={"product": {"id": product.pk, "title": product.title}},
        )
        messages.success(
            request,
            _("Buyers only: this page is now shown only to buyers of “%(product)s”.")
            % {"product": product.title},
        )
        return redirect(edit_url)


class BuyersOnlyIndexView(WagtailAdminTemplateMixin, TemplateView):
    """Every page for buyers only, with its product, for an overview (editors of pages)."""

    template_name = "wagtail_paid_delivery/admin/buyers_only_index.html"
    page_title = _("Buyers-only pages")
    header_icon = "lock"

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        return [*self.breadcrumbs_items, {"url": "", "label": self.get_page_title()}]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        rows = BuyersOnlyRestriction.objects.select_related("page", "product").order_by(
            "page__path"
        )
        user = self.request.user
        # Only the pages this editor may restrict: the listing names no page they cannot edit.
        context["rows"] = [{"restriction": r} for r in rows if may_set(user, r.page)]
        return context


def index_menu_item() -> MenuItem:
    return MenuItem(
        _("Buyers-only pages"),
        reverse(INDEX_URL_NAME),
        icon_name="lock",
        order=500,
    )


def status_message(page: Any) -> tuple[str, str] | None:
    """What the page editor says about the page's restriction: (level, text), or None."""
    restriction = BuyersOnlyRestriction.objects.filter(page=page).select_related("product").first()
    if restriction is None:
        return None
    product = restriction.product
    if product is None:
        return (
            "error",
            str(
                _(
                    "Buyers only: the product this page was restricted to was deleted. Nobody "
                    "can see the page until you choose another product or remove the restriction."
                )
            ),
        )
    if not product.live:
        return (
            "warning",
            str(
                _(
                    "Buyers only: “%(product)s” is not live. Its buyers still see this page; "
                    "nobody else can buy it from here."
                )
            )
            % {"product": product.title},
        )
    return (
        "info",
        str(_("Buyers only: this page is shown only to buyers of “%(product)s”."))
        % {"product": product.title},
    )
