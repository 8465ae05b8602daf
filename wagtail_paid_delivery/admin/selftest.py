"""The delivery self-test page in the "Shop" menu: the checks a web request may run itself,
the last full run (HTTP probes included) the task cluster made, and a button to queue one.

The HTTP probes never run inside this page's request: a site with few workers would wait on
itself. ``manage.py delivery_selftest`` runs everything at once from a shell.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.generic import TemplateView
from wagtail.admin import messages
from wagtail.admin.menu import MenuItem
from wagtail.admin.views.generic.base import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin

from .. import permissions, selftest
from ..models import Purchase

URL_NAME = "wagtail_paid_delivery_admin:selftest"


class SelfTestView(PermissionCheckedMixin, WagtailAdminTemplateMixin, TemplateView):
    model = Purchase
    any_permission_required = [permissions.VIEW]
    template_name = "wagtail_paid_delivery/admin/selftest.html"
    page_title = _("Delivery self-test")
    header_icon = "tick-inverse"

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        return [*self.breadcrumbs_items, {"url": "", "label": self.get_page_title()}]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(
            {
                "checks": selftest.local_checks(),
                "last_run": selftest.last_run(),
                "action_url": self.request.path,
            }
        )
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        selftest.enqueue(with_stripe=request.POST.get("stripe") == "1")
        messages.success(
            request,
            _(
                "Self-test queued. The task cluster runs it; reload this page in a moment to "
                "see the result."
            ),
        )
        return redirect(reverse(URL_NAME))


class SelfTestMenuItem(MenuItem):
    def is_shown(self, request: HttpRequest) -> bool:
        return permissions.may_view_purchases(request.user)


def menu_item() -> MenuItem:
    return SelfTestMenuItem(
        _("Delivery self-test"),
        reverse(URL_NAME),
        name="delivery-selftest",
        icon_name="tick-inverse",
        order=900,
    )
