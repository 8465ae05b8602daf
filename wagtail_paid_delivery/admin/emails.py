"""Failed emails in the Wagtail admin: the outbox's emails that failed or are retrying, why,
and a "send again" action.

The same idiom as the event inbox (``admin/events.py``): a ``ModelViewSet`` in the "Shop" menu
with a listing (filters for kind, status and date; the last error, the attempts and the next
attempt in columns), an inspect view, and a confirmation view that gives a failed email a fresh
set of attempts (``desk.send_email_again``, logged). Emails are governed by the purchases'
permissions (``permissions.EmailPermissionPolicy``): ``view`` lists them, ``support`` (the
desk's help for buyers) sends one again.
"""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.contrib.admin.utils import quote
from django.db.models import Q, QuerySet
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import Truncator, capfirst
from django.utils.translation import gettext_lazy as _
from wagtail.admin import messages
from wagtail.admin.filters import DateRangePickerWidget, WagtailFilterSet
from wagtail.admin.ui.tables import Column, DateColumn, TitleColumn
from wagtail.admin.views.generic import IndexView, InspectView
from wagtail.admin.viewsets.model import ModelViewSet

from .. import desk, permissions
from ..models import OutboundEmail
from .desk_viewset import DeskObjectActionView, DeskViewSetMixin

M = OutboundEmail.Status

#: What the listing shows: emails every attempt of which failed, and emails waiting for their
#: next attempt after at least one failure.
FAILED_OR_RETRYING = Q(status=M.FAILED) | Q(status=M.PENDING, attempts__gt=0)


def is_retrying(email: OutboundEmail) -> bool:
    return email.status == M.PENDING and email.attempts > 0


def status_label(email: OutboundEmail) -> str:
    if email.status == M.FAILED:
        return str(_("failed"))
    if is_retrying(email):
        return str(_("retrying"))
    return str(email.get_status_display())


def status_badge(email: OutboundEmail) -> str:
    classname = "wpd-status--error" if email.status == M.FAILED else "wpd-status--waiting"
    return format_html('<span class="w-status {}">{}</span>', classname, status_label(email))


def next_attempt(email: OutboundEmail) -> str:
    if email.status == M.FAILED:
        return str(_("none: send it again"))
    if email.next_attempt_at is None:
        return "—"
    return formats.date_format(timezone.localtime(email.next_attempt_at), "DATETIME_FORMAT")


def short_error(email: OutboundEmail) -> str:
    return Truncator(email.last_error).chars(90) if email.last_error else "—"


class FailedEmailFilterSet(WagtailFilterSet):
    kind = django_filters.ChoiceFilter(
        label=_("Kind"), choices=OutboundEmail.Kind.choices, empty_label=_("All kinds")
    )
    state = django_filters.ChoiceFilter(
        label=_("Status"),
        choices=[("failed", _("Failed")), ("retrying", _("Retrying"))],
        empty_label=_("All"),
        widget=forms.RadioSelect,
        method="filter_state",
    )
    created_at = django_filters.DateFromToRangeFilter(
        label=_("Promised"), widget=DateRangePickerWidget
    )

    class Meta:
        model = OutboundEmail
        fields = ["kind", "state", "created_at"]

    def filter_state(self, queryset: Any, name: str, value: str) -> Any:
        if value == "failed":
            return queryset.filter(status=M.FAILED)
        if value == "retrying":
            return queryset.filter(status=M.PENDING)
        return queryset


class FailedEmailIndexView(IndexView):
    any_permission_required = [permissions.VIEW]
    page_title = _("Failed emails")
    purchase_url_name = "wagtail_paid_delivery_purchases:inspect"

    def get_base_queryset(self) -> QuerySet[OutboundEmail]:
        return super().get_base_queryset().filter(FAILED_OR_RETRYING)

    def purchase_link(self, email: OutboundEmail) -> str:
        if email.purchase_id is None:
            return "—"
        url = reverse(self.purchase_url_name, args=(quote(email.purchase_id),))
        return format_html(
            '<a href="{}">{}</a>', url, _("Purchase #%(pk)s") % {"pk": email.purchase_id}
        )

    @cached_property
    def columns(self) -> list[Any]:
        return [
            TitleColumn(
                "kind",
                label=_("Email"),
                accessor=lambda e: capfirst(e.get_kind_display()),
                sort_key="kind",
                get_url=self.get_inspect_url,
            ),
            Column("to", label=_("To"), sort_key="to"),
            Column("status", label=_("Status"), accessor=status_badge, sort_key="status"),
            Column("attempts", label=_("Attempts"), sort_key="attempts"),
            Column(
                "next_attempt_at",
                label=_("Next attempt"),
                accessor=next_attempt,
                sort_key="next_attempt_at",
            ),
            Column("last_error", label=_("Last error"), accessor=short_error),
            Column("purchase", label=_("Purchase"), accessor=self.purchase_link),
            DateColumn("last_attempt_at", label=_("Last attempt"), sort_key="last_attempt_at"),
        ]


class FailedEmailInspectView(InspectView):
    any_permission_required = [permissions.VIEW]
    template_name = "wagtail_paid_delivery/admin/email_inspect.html"
    page_title = _("Email")
    send_again_url_name: str | None = None
    purchase_url_name = "wagtail_paid_delivery_purchases:inspect"

    def get_page_subtitle(self) -> str:
        return str(self.object)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        email = self.object
        can_send = self.user_has_permission(permissions.SUPPORT)
        purchase_url = ""
        if email.purchase_id:
            purchase_url = reverse(self.purchase_url_name, args=(quote(email.purchase_id),))
        context.update(
            {
                "email": email,
                "status_badge": status_badge(email),
                "next_attempt": next_attempt(email),
                "purchase_url": purchase_url,
                "listed": list(email.purchases.order_by("pk")),
                "send_again_url": reverse(self.send_again_url_name or "", args=(quote(email.pk),))
                if can_send
                else "",
                "refusal": desk.email_refusal(email) if can_send else "",
            }
        )
        return context


class SendAgainView(DeskObjectActionView):
    """GET: what sending again does, and a confirm button; POST: fresh attempts, queued."""

    model = OutboundEmail
    any_permission_required = [permissions.VIEW]
    permission_required = permissions.SUPPORT
    template_name = "wagtail_paid_delivery/admin/email_send_again.html"
    form_class = forms.Form
    page_title = _("Send an email again")
    header_icon = "mail"
    index_label = _("Failed emails")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        email = self.object
        context.update(
            {
                "email": email,
                "status_badge": status_badge(email),
                "refusal": desk.email_refusal(email),
                "cancel_url": self.inspect_url,
                "action_url": self.request.path,
            }
        )
        return context

    def form_valid(self, form: forms.Form) -> HttpResponse:
        try:
            desk.send_email_again(self.object, user=self.request.user)
        except desk.NotApplicable as refused:
            messages.error(self.request, str(refused))
            return redirect(self.inspect_url)
        messages.success(
            self.request,
            str(_("%(email)s queued again: it is sent within a minute or two, and shows here."))
            % {"email": self.object.get_kind_display().capitalize()},
        )
        return redirect(self.inspect_url)


class FailedEmailViewSet(DeskViewSetMixin, ModelViewSet):
    """Emails that failed or are retrying: listing (filters, sort) and inspect with the last
    error and "send again". No add, edit, delete or copy view: the outbox records and moves
    them."""

    model = OutboundEmail
    url_prefix = "shop/emails"
    url_namespace = "wagtail_paid_delivery_emails"
    icon = "mail"
    menu_label = _("Failed emails")
    #: In the "Shop" menu, after the Stripe events.
    menu_hook = "register_paid_delivery_shop_menu_item"
    add_to_admin_menu = True
    menu_order = 300
    #: Governed by the purchases' permissions, which the purchases' viewset lists.
    registers_permissions = False
    add_to_reference_index = False
    copy_view_enabled = False
    inspect_view_enabled = True
    index_view_class = FailedEmailIndexView
    inspect_view_class = FailedEmailInspectView
    #: The generic listing, with the desk's stylesheet (the status badges' colours).
    index_template_name = "wagtail_paid_delivery/admin/event_index.html"
    filterset_class = FailedEmailFilterSet
    #: Django ORM search over the recipient and the error.
    search_fields = ["to", "last_error"]
    search_backend_name = None
    list_per_page = 50
    ordering = "-created_at"

    def get_inspect_view_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_inspect_view_kwargs(
            send_again_url_name=self.get_url_name("send_again"), **kwargs
        )

    def get_urlpatterns(self) -> list[Any]:
        return [
            path("", self.index_view, name="index"),
            path("results/", self.index_results_view, name="index_results"),
            path("<int:pk>/", self.inspect_view, name="inspect"),
            path(
                "<int:pk>/send-again/",
                SendAgainView.as_view(
                    index_url_name=self.get_url_name("index"),
                    inspect_url_name=self.get_url_name("inspect"),
                ),
                name="send_again",
            ),
        ]
