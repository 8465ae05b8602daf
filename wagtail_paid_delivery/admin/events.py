"""The event inbox in the Wagtail admin: the Stripe events stored by the webhook, their outcome,
their payload, and a "reprocess" action.

A ``ModelViewSet`` in the "Shop" menu (``register_paid_delivery_shop_menu_item``): a listing
with filters for type, status, date and mode, where failed and retrying events say why and
when the next attempt runs; an inspect view with the pretty-printed payload (escaped, as all
template output); and a confirmation view that queues an event again (``desk.reprocess_event``,
logged). Checked against ``permissions.EventPermissionPolicy``.
"""

from __future__ import annotations

import json
from typing import Any

import django_filters
from django import forms
from django.contrib.admin.utils import quote
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from wagtail.admin import messages
from wagtail.admin.filters import DateRangePickerWidget, WagtailFilterSet
from wagtail.admin.ui.tables import Column, DateColumn, TitleColumn
from wagtail.admin.views.generic import IndexView, InspectView
from wagtail.admin.viewsets.model import ModelViewSet
from wagtail.permissions import policy_registry

from .. import desk, permissions
from ..models import Purchase, StripeEvent
from .desk_viewset import DeskObjectActionView, DeskViewSetMixin

E = StripeEvent.Status

#: Each status's badge: Wagtail's status tag with a colour class (desk.css).
STATUS_CLASSES: dict[str, str] = {
    E.RECEIVED: "wpd-status--waiting",
    E.PROCESSED: "wpd-status--ok",
    E.IGNORED: "wpd-status--muted",
    E.FAILED: "wpd-status--error",
}


def status_label(event: StripeEvent) -> str:
    """The status as a shop owner needs it: a failed event says whether it will be retried."""
    if event.status != E.FAILED:
        return str(event.get_status_display())
    if event.next_attempt_at is None:
        return str(_("failed: needs reprocessing"))
    return str(_("failed: retrying"))


def status_badge(event: StripeEvent) -> str:
    return format_html(
        '<span class="w-status {}">{}</span>',
        STATUS_CLASSES.get(event.status, ""),
        status_label(event),
    )


def next_attempt(event: StripeEvent) -> str:
    if event.next_attempt_at is None:
        return "—"
    when = formats.date_format(timezone.localtime(event.next_attempt_at), "DATETIME_FORMAT")
    if event.status == E.RECEIVED:
        return str(_("queued or running (lease until %(when)s)")) % {"when": when}
    return when


def short_error(event: StripeEvent) -> str:
    return Truncator(event.last_error).chars(90) if event.last_error else "—"


def _event_types(request: HttpRequest) -> list[tuple[str, str]]:
    types = StripeEvent.objects.order_by("type").values_list("type", flat=True).distinct()
    return [(t, t) for t in types]


class StripeEventFilterSet(WagtailFilterSet):
    type = django_filters.ChoiceFilter(label=_("Type"), choices=[], empty_label=_("All types"))
    status = django_filters.MultipleChoiceFilter(
        label=_("Status"), choices=E.choices, widget=forms.CheckboxSelectMultiple
    )
    retrying = django_filters.ChoiceFilter(
        label=_("Failed"),
        choices=[("retrying", _("Retrying")), ("stuck", _("Needs reprocessing"))],
        empty_label=_("All"),
        widget=forms.RadioSelect,
        method="filter_failed",
    )
    received_at = django_filters.DateFromToRangeFilter(
        label=_("Received"), widget=DateRangePickerWidget
    )
    mode = django_filters.ChoiceFilter(
        label=_("Mode"),
        choices=[("live", _("Live")), ("test", _("Test"))],
        empty_label=_("All"),
        widget=forms.RadioSelect,
        method="filter_mode",
    )

    class Meta:
        model = StripeEvent
        fields = ["type", "status", "retrying", "received_at", "mode"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The types this site has stored (read per request: new types arrive).
        self.filters["type"].extra["choices"] = _event_types(self.request)

    def filter_mode(self, queryset: Any, name: str, value: str) -> Any:
        return queryset.filter(livemode=(value == "live")) if value else queryset

    def filter_failed(self, queryset: Any, name: str, value: str) -> Any:
        failed = queryset.filter(status=E.FAILED)
        if value == "retrying":
            return failed.filter(next_attempt_at__isnull=False)
        if value == "stuck":
            return failed.filter(next_attempt_at__isnull=True)
        return queryset


class StripeEventIndexView(IndexView):
    any_permission_required = [permissions.VIEW_EVENTS]
    purchase_url_name = "wagtail_paid_delivery_purchases:inspect"

    def purchase_link(self, event: StripeEvent) -> str:
        if event.purchase_id is None:
            return "—"
        url = reverse(self.purchase_url_name, args=(quote(event.purchase_id),))
        return format_html(
            '<a href="{}">{}</a>', url, _("Purchase #%(pk)s") % {"pk": event.purchase_id}
        )

    @cached_property
    def columns(self) -> list[Any]:
        return [
            TitleColumn(
                "type",
                label=_("Type"),
                sort_key="type",
                get_url=self.get_inspect_url,
                classname="wpd-nowrap",
            ),
            Column("status", label=_("Status"), accessor=status_badge, sort_key="status"),
            Column("attempts", label=_("Attempts"), sort_key="attempts"),
            Column(
                "next_attempt_at",
                label=_("Next attempt"),
                accessor=next_attempt,
                sort_key="next_attempt_at",
            ),
            Column("last_error", label=_("Last error or note"), accessor=short_error),
            Column("purchase", label=_("Purchase"), accessor=self.purchase_link),
            DateColumn("received_at", label=_("Received"), sort_key="received_at"),
        ]


class StripeEventInspectView(InspectView):
    any_permission_required = [permissions.VIEW_EVENTS]
    template_name = "wagtail_paid_delivery/admin/event_inspect.html"
    page_title = _("Stripe event")
    reprocess_url_name: str | None = None
    purchase_url_name = "wagtail_paid_delivery_purchases:inspect"

    def get_page_subtitle(self) -> str:
        return str(self.object)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        event = self.object
        purchase_url = ""
        purchases = policy_registry.get_by_type(Purchase)
        if event.purchase_id and purchases.user_has_permission(self.request.user, permissions.VIEW):
            purchase_url = reverse(self.purchase_url_name, args=(quote(event.purchase_id),))
        can_reprocess = self.user_has_permission(permissions.REPROCESS)
        context.update(
            {
                "event": event,
                "status_badge": status_badge(event),
                "next_attempt": next_attempt(event),
                # Rendered with {{ }}: escaped like every other value (a payload is the sender's).
                "payload_json": json.dumps(
                    event.payload, indent=2, sort_keys=True, ensure_ascii=False
                ),
                "purchase_url": purchase_url,
                "reprocess_url": reverse(self.reprocess_url_name or "", args=(quote(event.pk),))
                if can_reprocess
                else "",
                "refusal": desk.event_refusal(event) if can_reprocess else "",
            }
        )
        return context


class ReprocessForm(forms.Form):
    reset_attempts = forms.BooleanField(
        label=_("Count attempts from zero again"),
        required=False,
        help_text=_("So automatic retries resume if it fails again."),
    )


class ReprocessView(DeskObjectActionView):
    """GET: what reprocessing does, and a confirm button; POST: queue the event again."""

    model = StripeEvent
    any_permission_required = [permissions.VIEW_EVENTS]
    permission_required = permissions.REPROCESS
    template_name = "wagtail_paid_delivery/admin/event_reprocess.html"
    form_class = ReprocessForm
    page_title = _("Reprocess a Stripe event")
    header_icon = "rotate"
    index_label = _("Stripe events")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        event = self.object
        context.update(
            {
                "event": event,
                "status_badge": status_badge(event),
                "refusal": desk.event_refusal(event),
                "cancel_url": self.inspect_url,
                "action_url": self.request.path,
            }
        )
        return context

    def form_valid(self, form: forms.Form) -> HttpResponse:
        try:
            desk.reprocess_event(
                self.object,
                user=self.request.user,
                reset_attempts=bool(form.cleaned_data["reset_attempts"]),
            )
        except desk.NotApplicable as refused:
            messages.error(self.request, str(refused))
            return redirect(self.inspect_url)
        messages.success(
            self.request,
            str(_("%(event)s queued again; its outcome shows here once the task cluster ran it."))
            % {"event": self.object.stripe_id},
        )
        return redirect(self.inspect_url)


class StripeEventViewSet(DeskViewSetMixin, ModelViewSet):
    """Stripe events: listing (filters, sort) and inspect with the payload and "reprocess".
    No add, edit, delete or copy view: the webhook stores events and the inbox moves them."""

    model = StripeEvent
    url_prefix = "shop/events"
    url_namespace = "wagtail_paid_delivery_events"
    icon = "site"
    menu_label = _("Stripe events")
    #: In the "Shop" menu, after Purchases.
    menu_hook = "register_paid_delivery_shop_menu_item"
    add_to_admin_menu = True
    menu_order = 200
    inspect_permission = permissions.VIEW_EVENTS
    add_to_reference_index = False
    copy_view_enabled = False
    inspect_view_enabled = True
    index_view_class = StripeEventIndexView
    inspect_view_class = StripeEventInspectView
    #: The generic listing, with the desk's stylesheet (the status badges' colours).
    index_template_name = "wagtail_paid_delivery/admin/event_index.html"
    filterset_class = StripeEventFilterSet
    #: Django ORM search over the ids Stripe's Dashboard shows.
    search_fields = ["stripe_id", "type"]
    search_backend_name = None
    list_per_page = 50
    ordering = "-received_at"

    def get_inspect_view_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_inspect_view_kwargs(
            reprocess_url_name=self.get_url_name("reprocess"), **kwargs
        )

    def get_urlpatterns(self) -> list[Any]:
        return [
            path("", self.index_view, name="index"),
            path("results/", self.index_results_view, name="index_results"),
            path("<int:pk>/", self.inspect_view, name="inspect"),
            path(
                "<int:pk>/reprocess/",
                ReprocessView.as_view(
                    index_url_name=self.get_url_name("index"),
                    inspect_url_name=self.get_url_name("inspect"),
                ),
                name="reprocess",
            ),
        ]
