"""The shop desk's buyer pages: everything stored about a buyer (export it, erase it), and a
purchase "viewed as its buyer".

Export and erase need "Can export and erase a buyer's personal data" (``manage_buyer_data``)
besides "Can view purchase": they reach every purchase of an address at once, IPs included,
and erasing cannot be undone. "View as this buyer" needs only "Can view purchase": it shows
what the inspect view already tells, in the buyer's own screens, and changes nothing.

The address travels in POST bodies only (never in a URL, a message or a file name): URLs end
up in access logs and browser histories. The rules live in ``buyer_data`` and ``screens``.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from django.views.generic import TemplateView
from wagtail.admin import messages
from wagtail.admin.menu import MenuItem
from wagtail.admin.views.generic.base import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.permissions import policy_registry

from .. import buyer_data, permissions, screens
from ..models import Purchase

NS = "wagtail_paid_delivery_admin"
PURCHASES = "wagtail_paid_delivery_purchases"


class BuyerForm(forms.Form):
    email = forms.EmailField(label=_("Buyer's email address"), max_length=254)


class EraseForm(forms.Form):
    """The address typed again: erasing cannot be undone."""

    confirm_email = forms.CharField(
        label=_("Type the buyer's email address again to confirm"), max_length=254
    )

    def __init__(self, *args: Any, subject: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subject = subject

    def clean_confirm_email(self) -> str:
        typed = self.cleaned_data["confirm_email"]
        if not buyer_data.same_address(typed, self.subject):
            raise forms.ValidationError(_("This is not the address whose data is erased."))
        return typed


class BuyerPage(PermissionCheckedMixin, WagtailAdminTemplateMixin, TemplateView):
    """Base: the buyer's data pages, for one purchase's address (``pk``) or an address typed."""

    model = Purchase
    any_permission_required = [permissions.VIEW]
    permission_required = permissions.MANAGE_BUYER_DATA
    header_icon = "user"
    page_title = _("Buyer data")

    @cached_property
    def purchase(self) -> Purchase | None:
        # After PermissionCheckedMixin.dispatch: a refused editor learns nothing.
        pk = self.kwargs.get("pk")
        return get_object_or_404(Purchase, pk=pk) if pk is not None else None

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        index = reverse(f"{PURCHASES}:index")
        items = [*self.breadcrumbs_items, {"url": index, "label": _("Purchases")}]
        if self.purchase is not None:
            inspect = reverse(f"{PURCHASES}:inspect", args=[self.purchase.pk])
            items.append({"url": inspect, "label": str(self.purchase)})
        return [*items, {"url": "", "label": self.get_page_title()}]

    def back_url(self) -> str:
        if self.purchase is not None:
            return reverse(f"{PURCHASES}:inspect", args=[self.purchase.pk])
        return reverse(f"{NS}:buyer_data")

    def subject(self) -> str:
        """The address whose data this request is about ("" when none is given)."""
        if self.purchase is not None:
            return self.purchase.email
        form = BuyerForm(self.request.POST)
        return form.cleaned_data["email"] if form.is_valid() else ""


class BuyerDataView(BuyerPage):
    """What is stored about an address: a form to type one (or a purchase's), the counts per
    kind, their purchases, and the export and erase buttons."""

    template_name = "wagtail_paid_delivery/admin/buyer_data.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        email = self.subject()
        records = buyer_data.find(email) if email else None
        context.update(
            {
                "purchase": self.purchase,
                "form": kwargs.get("form") or BuyerForm(initial={"email": email}),
                "email": email,
                "records": records,
                "counts": records.counts() if records else {},
                "action_url": reverse(f"{NS}:buyer_data"),
                "export_url": reverse(f"{NS}:buyer_export"),
                "erase_url": reverse(f"{NS}:purchase_erase", args=[self.purchase.pk])
                if self.purchase is not None
                else reverse(f"{NS}:buyer_erase"),
                "back_url": self.back_url(),
            }
        )
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        form = BuyerForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form))
        return self.render_to_response(self.get_context_data())


class ExportView(BuyerPage):
    """POST: the JSON download of everything stored about the address; logged per purchase."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email = self.subject()
        if not email:
            messages.error(request, _("Enter a valid email address."))
            return redirect(self.back_url())
        data = buyer_data.export(email, user=request.user)
        body = json.dumps(data, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
        # The address stays out of the file name (downloads folders, browser history).
        name = f"buyer-data-{timezone.localdate():%Y-%m-%d}.json"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


class EraseView(BuyerPage):
    """Erase an address's data: a confirmation with the address typed again, then erase."""

    template_name = "wagtail_paid_delivery/admin/buyer_erase.html"
    page_title = _("Erase a buyer's data")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        email = kwargs.get("email", "")
        records = buyer_data.find(email) if email else None
        context.update(
            {
                "purchase": self.purchase,
                "email": email,
                "records": records,
                "counts": records.counts() if records else {},
                "form": kwargs.get("form") or EraseForm(subject=email),
                "action_url": self.request.path,
                "cancel_url": self.back_url(),
            }
        )
        return context

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if self.purchase is None:
            return redirect(reverse(f"{NS}:buyer_data"))
        return self.render_to_response(self.get_context_data(email=self.purchase.email))

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email = self.subject()
        if not email:
            messages.error(request, _("There is no email address to erase."))
            return redirect(self.back_url())
        if "confirm_email" not in request.POST:  # from the buyer data page: confirm first
            return self.render_to_response(self.get_context_data(email=email))
        form = EraseForm(request.POST, subject=email)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(email=email, form=form))
        done = buyer_data.erase(email, user=request.user)
        if done.nothing:
            messages.warning(request, _("Nothing is stored about this address."))
        else:
            message = _(
                "Buyer data erased: %(purchases)s purchases anonymised (amounts, dates and "
                "Stripe ids kept), %(links)s live links revoked, %(events)s Stripe events and "
                "%(emails)s emails anonymised."
            )
            messages.success(
                request,
                str(message)
                % {
                    "purchases": done.purchases,
                    "links": done.links_revoked,
                    "events": done.stripe_events,
                    "emails": done.emails,
                },
            )
        return redirect(self.back_url())


class ViewAsBuyerView(PermissionCheckedMixin, WagtailAdminTemplateMixin, TemplateView):
    """A purchase's screens as its buyer reads them now (``screens.buyer_screens``).

    Each screen is rendered by the buyer's own template into a sandboxed frame (no script, no
    form, no working token): reading this page issues, counts and sends nothing.
    """

    model = Purchase
    any_permission_required = [permissions.VIEW]
    template_name = "wagtail_paid_delivery/admin/view_as.html"
    page_title = _("View as this buyer")
    header_icon = "view"

    @cached_property
    def purchase(self) -> Purchase:
        return get_object_or_404(Purchase, pk=self.kwargs["pk"])

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        inspect = reverse(f"{PURCHASES}:inspect", args=[self.purchase.pk])
        return [
            *self.breadcrumbs_items,
            {"url": reverse(f"{PURCHASES}:index"), "label": _("Purchases")},
            {"url": inspect, "label": str(self.purchase)},
            {"url": "", "label": self.get_page_title()},
        ]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["purchase"] = self.purchase
        context["screens"] = screens.buyer_screens(self.purchase, self.request)
        context["back_url"] = reverse(f"{PURCHASES}:inspect", args=[self.purchase.pk])
        return context

    def render_to_response(self, context: dict[str, Any], **kwargs: Any) -> TemplateResponse:
        response = super().render_to_response(context, **kwargs)
        response["Cache-Control"] = "no-store"
        return response  # type: ignore[return-value]


def may_manage_buyer_data(user: Any) -> bool:
    """Superusers and editors with both "Can view purchase" and the buyer data permission."""
    policy = policy_registry.get_by_type(Purchase)
    return permissions.may_view_purchases(user) and bool(
        user.is_superuser or policy.user_has_permission(user, permissions.MANAGE_BUYER_DATA)
    )


class BuyerDataMenuItem(MenuItem):
    def is_shown(self, request: HttpRequest) -> bool:
        return may_manage_buyer_data(request.user)


def menu_item() -> MenuItem:
    return BuyerDataMenuItem(
        _("Buyer data"), reverse(f"{NS}:buyer_data"), name="buyer-data", icon_name="user", order=800
    )
