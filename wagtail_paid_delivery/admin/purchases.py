"""The shop desk: purchases in the Wagtail admin (listing, export, inspect with the timeline,
and the actions that help a buyer or end their access).

Wagtail's own pieces: a ``ModelViewSet`` with an index view (django-filter ``FilterSet``,
search, sorting, pagination, CSV and XLSX export), an inspect view, and one confirmation view
per action, all checked against ``permissions.PurchasePermissionPolicy``. The rules and the log
entries live in ``desk`` (actions) and ``timeline`` (what happened); views here only check,
confirm, call and answer. Registered in ``wagtail_hooks.py`` inside the "Shop" menu group.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import django_filters
from django import forms
from django.apps import apps
from django.contrib.admin.utils import quote
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from django.views.generic import FormView
from wagtail.admin import messages
from wagtail.admin.filters import DateRangePickerWidget, WagtailFilterSet
from wagtail.admin.ui.tables import Column, DateColumn, StatusTagColumn, TitleColumn
from wagtail.admin.views.generic import IndexView, InspectView
from wagtail.admin.views.generic.base import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.admin.viewsets.model import ModelViewSet, ModelViewSetGroup
from wagtail.admin.widgets.button import HeaderButton

from .. import (
    currencies,
    desk,
    licenses,
    links,
    order_numbers,
    payments,
    permissions,
    refunds,
    stripe_api,
    timeline,
    versions,
)
from ..models import DownloadLink, LicenseActivation, OutboundEmail, ProductPageMixin, Purchase
from .desk_viewset import DeskViewSetMixin
from .export import FormulaSafeExportMixin

S = Purchase.Status


# Listing --------------------------------------------------------------------------------------


def _sold_products(request: HttpRequest) -> Any:
    """The product pages with purchases (the site's own Page model: it is swappable)."""
    pages = Purchase._meta.get_field("product").related_model._default_manager  # type: ignore[union-attr]
    return pages.filter(pk__in=Purchase.objects.values("product_id")).order_by("title")


class PurchaseFilterSet(WagtailFilterSet):
    status = django_filters.MultipleChoiceFilter(
        label=_("Status"), choices=S.choices, widget=forms.CheckboxSelectMultiple
    )
    product = django_filters.ModelChoiceFilter(
        label=_("Product"), queryset=_sold_products, empty_label=_("All products")
    )
    created_at = django_filters.DateFromToRangeFilter(label=_("Date"), widget=DateRangePickerWidget)
    mode = django_filters.ChoiceFilter(
        label=_("Mode"),
        choices=[("live", _("Live")), ("test", _("Test"))],
        empty_label=_("All"),
        widget=forms.RadioSelect,
        method="filter_mode",
    )
    source = django_filters.ChoiceFilter(
        label=_("Source"),
        choices=Purchase.Source.choices,
        empty_label=_("All"),
        widget=forms.RadioSelect,
    )

    class Meta:
        model = Purchase
        fields = ["status", "product", "created_at", "mode", "source"]

    def filter_mode(self, queryset: Any, name: str, value: str) -> Any:
        return queryset.filter(livemode=(value == "live")) if value else queryset


def _buyer(purchase: Purchase) -> str:
    if purchase.erased_at is not None and not purchase.email:
        return str(_("(buyer data erased)"))
    return purchase.email or str(_("(no email address yet)"))


def _mode(purchase: Purchase) -> str:
    if purchase.source == Purchase.Source.GRANT:
        return str(_("Complimentary"))
    return str(_("Live") if purchase.livemode else _("Test"))


class PurchaseIndexView(FormulaSafeExportMixin, IndexView):
    any_permission_required = [permissions.VIEW]
    grant_url_name: str | None = None

    @cached_property
    def header_buttons(self) -> list[Any]:
        buttons = list(super().header_buttons)
        if self.grant_url_name and self.user_has_permission(permissions.GRANT):
            label = _("Grant a complimentary copy")
            buttons.append(HeaderButton(label, url=reverse(self.grant_url_name), icon_name="plus"))
        return buttons

    @cached_property
    def columns(self) -> list[Any]:
        return [
            TitleColumn(
                "email",
                label=_("Buyer"),
                accessor=_buyer,
                sort_key="email",
                get_url=self.get_inspect_url,
            ),
            Column("product_title", label=_("Product"), sort_key="product_title"),
            Column("price_display", label=_("Price"), sort_key="amount"),
            StatusTagColumn(
                "status",
                label=_("Status"),
                accessor="get_status_display",
                sort_key="status",
                primary=lambda p: p.status == S.PAID,
            ),
            Column("livemode", label=_("Mode"), accessor=_mode, sort_key="livemode"),
            DateColumn("created_at", label=_("Date"), sort_key="created_at"),
        ]

    def get_filename(self) -> str:
        return f"{self.export_filename}-{timezone.localdate():%Y-%m-%d}"

    def search_queryset(self, queryset: Any) -> Any:
        # Also an order number as a buyer reads it out: any case, spaces, hyphens or prefix.
        found = super().search_queryset(queryset)
        code = order_numbers.search_suffix(self.search_query) if self.is_searching else None
        return found | queryset.filter(order_number__endswith=code) if code else found


# Inspect ------------------------------------------------------------------------------------


#: The icon of each kind of timeline entry.
ENTRY_ICONS = {
    "purchase": "clipboard-list",
    "status": "tag",
    "stripe": "site",
    "editor": "user",
    "link": "link",
    "email": "mail",
    "download": "download",
}


#: The buyer pages' URL namespace (``admin/buyers.py``: view as this buyer, export, erase).
BUYERS = "wagtail_paid_delivery_admin"


class PurchaseInspectView(InspectView):
    any_permission_required = [permissions.VIEW]
    template_name = "wagtail_paid_delivery/admin/purchase_inspect.html"
    page_title = _("Purchase")
    #: The action URL names (set by the viewset): desk action → URL name.
    action_url_names: dict[str, str] = {}
    #: This view's own URL name: a bundle's included purchases and an included one's bundle.
    purchase_url_name = ""

    def get_page_subtitle(self) -> str:
        return str(self.object)

    def action_url(self, action: str, *args: Any) -> str:
        return reverse(self.action_url_names[action], args=(quote(self.object.pk), *args))

    def allowed(self, action: str) -> bool:
        """May this editor take ``action`` (their permission), and does it apply now."""
        needed = ACTION_PERMISSIONS[action]
        return self.user_has_permission(needed) and not desk.refusal(action, self.object)

    def actions(self) -> list[dict[str, Any]]:
        shown = []
        for action, label, classname in INSPECT_ACTIONS:
            if self.allowed(action):
                shown.append({"label": label, "url": self.action_url(action), "class": classname})
        return shown

    def link_rows(self, overview: list[timeline.LinkSummary]) -> list[dict[str, Any]]:
        can_support = self.user_has_permission(permissions.SUPPORT)
        rows = []
        for summary in overview:
            editable = can_support and not desk.link_refusal(summary.link)
            rows.append(
                {
                    "summary": summary,
                    "extend_url": self.action_url(desk.EXTEND_LINK, summary.link.pk)
                    if editable
                    else "",
                    "reset_url": self.action_url(desk.RESET_LINK, summary.link.pk)
                    if editable and summary.link.download_count
                    else "",
                }
            )
        return rows

    def buyer_links(self) -> list[dict[str, Any]]:
        """ "View as this buyer" (view permission) and their data (``manage_buyer_data``)."""
        pk = self.object.pk
        shown = [{"label": _("View as this buyer"), "url": reverse(f"{BUYERS}:view_as", args=[pk])}]
        if self.object.email and self.user_has_permission(permissions.MANAGE_BUYER_DATA):
            url = reverse(f"{BUYERS}:purchase_buyer_data", args=[pk])
            shown.append({"label": _("Export or erase the buyer's data"), "url": url})
        return shown

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        purchase = self.object
        facts = timeline.facts_for(purchase)
        overview = timeline.link_overview(purchase, facts)
        product = purchase.product_page
        entries = timeline.build_timeline(purchase, facts)
        context.update(
            {
                "purchase": purchase,
                "status_class": "w-status--primary" if purchase.status == S.PAID else "",
                "verdict": timeline.verdict(purchase, overview),
                "paid": payments.amount_paid(purchase),
                "refunded_display": currencies.format_price(
                    purchase.amount_refunded, purchase.currency
                ),
                "timeline_rows": [(e, ENTRY_ICONS.get(e.kind, "info-circle")) for e in entries],
                "link_rows": self.link_rows(overview),
                "desk_actions": self.actions(),
                "buyer_links": self.buyer_links(),
                "dashboard_url": timeline.stripe_dashboard_url(purchase),
                "product_edit_url": reverse("wagtailadmin_pages:edit", args=[product.pk])
                if product is not None
                else "",
                "downloads_counted": sum(s.link.download_count for s in overview),
                # Which version of each file this buyer's links serve (``versions``).
                "served_files": versions.files_of_purchase(purchase),
                "past_buyers_get": product.get_past_buyers_get_display() if product else "",
                **self.bundle_context(),
                **self.license_context(),
            }
        )
        return context

    def bundle_context(self) -> dict[str, Any]:
        """A bundle purchase's included purchases, or an included purchase's bundle, each with
        its inspect URL."""
        purchase = self.object
        inspect = self.purchase_url_name
        bundle = purchase.bundle
        return {
            "bundle": bundle,
            "bundle_url": reverse(inspect, args=[bundle.pk]) if bundle and inspect else "",
            "included_rows": [
                {"purchase": child, "url": reverse(inspect, args=[child.pk]) if inspect else ""}
                for child in purchase.included.order_by("pk")
            ],
        }

    def license_context(self) -> dict[str, Any]:
        """The purchase's license key, its activations and, per live one, a release button."""
        license = licenses.license_of(self.object)
        if license is None:
            return {"license": None}
        can_release = self.user_has_permission(permissions.SUPPORT)
        rows = [
            {
                "activation": activation,
                "release_url": self.action_url(desk.RELEASE_ACTIVATION, activation.pk)
                if can_release and activation.released_at is None
                else "",
            }
            for activation in license.activations.all()  # type: ignore[attr-defined]
        ]
        return {
            "license": license,
            "license_key": licenses.key_text(license),
            "license_public_key": licenses.public_key_base64(),
            "activation_rows": rows,
        }


# Actions ------------------------------------------------------------------------------------


class HoursField(forms.IntegerField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 24 * 366 * 5)
        kwargs.setdefault("label", _("Valid for (hours from now)"))
        super().__init__(**kwargs)


class ConfirmForm(forms.Form):
    """An action with nothing to choose: the confirmation is the POST itself."""


class IssueLinkForm(forms.Form):
    lifetime_hours = HoursField()
    download_limit = forms.IntegerField(
        label=_("Downloads per file"),
        min_value=1,
        required=False,
        help_text=_("Empty: unlimited."),
    )
    send_email = forms.BooleanField(
        label=_("Email it to the buyer"),
        required=False,
        initial=True,
        help_text=_(
            "Unticked, the link is shown to you once (to paste into a reply); it is not stored."
        ),
    )


class ExtendLinkForm(forms.Form):
    lifetime_hours = HoursField()


class RevokeForm(forms.Form):
    how = forms.ChoiceField(
        label=_("How"),
        widget=forms.RadioSelect,
        choices=[
            ("suspend", _("Suspend: links pause until access is restored")),
            ("revoke", _("Revoke for good: every link ends; this cannot be undone")),
        ],
        initial="suspend",
    )
    reason = forms.CharField(
        label=_("Reason"),
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_("Kept on the purchase and in the log."),
    )

    def __init__(self, *args: Any, can_suspend: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not can_suspend:
            field = self.fields["how"]
            field.choices = [c for c in field.choices if c[0] == "revoke"]  # type: ignore[attr-defined]
            field.initial = "revoke"


class CorrectEmailForm(forms.Form):
    email = forms.EmailField(label=_("Correct email address"))
    revoke_links = forms.BooleanField(
        label=_("Revoke the links sent so far"),
        required=False,
        initial=True,
        help_text=_("They went to the old address, which may belong to someone else."),
    )
    send_link = forms.BooleanField(
        label=_("Send a fresh link to the new address"), required=False, initial=True
    )


class PurchaseActionView(PermissionCheckedMixin, WagtailAdminTemplateMixin, FormView):
    """Base of the desk's actions: GET shows what will happen and a form, POST acts.

    The editor needs ``view`` (the page shows the purchase) and the action's own permission;
    the action must apply to the purchase as it is now (``desk.refusal``), checked again under
    the purchase's row lock when it runs.
    """

    model = Purchase
    any_permission_required = [permissions.VIEW]
    permission_required = permissions.SUPPORT
    template_name = "wagtail_paid_delivery/admin/purchase_action.html"
    form_class: type[forms.Form] = ConfirmForm
    #: The desk action (``desk.RESEND``…), for ``desk.refusal``.
    action = ""
    description: Any = ""
    confirm_label: Any = _("Confirm")
    destructive = False
    header_icon = "clipboard-list"
    index_url_name: str | None = None
    inspect_url_name: str | None = None

    @cached_property
    def object(self) -> Purchase:
        # Loaded on first use, after PermissionCheckedMixin.dispatch: a refused editor learns
        # nothing, not even whether the purchase exists.
        return get_object_or_404(Purchase, pk=self.kwargs["pk"])

    @property
    def inspect_url(self) -> str:
        return reverse(self.inspect_url_name or "", args=(quote(self.object.pk),))

    def refusal(self) -> str:
        return desk.refusal(self.action, self.object)

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        return [
            *self.breadcrumbs_items,
            {"url": reverse(self.index_url_name or ""), "label": _("Purchases")},
            {"url": self.inspect_url, "label": str(self.object)},
            {"url": "", "label": self.get_page_title()},
        ]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(
            {
                "purchase": self.object,
                "refusal": self.refusal(),
                "description": self.description,
                "confirm_label": self.confirm_label,
                "destructive": self.destructive,
                "cancel_url": self.inspect_url,
                "action_url": self.request.path,
            }
        )
        return context

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        refusal = self.refusal()
        if refusal:
            messages.error(request, refusal)
            return redirect(self.inspect_url)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: forms.Form) -> HttpResponse:
        try:
            response = self.act(form)
        except desk.NotApplicable as refused:
            messages.error(self.request, str(refused))
            return redirect(self.inspect_url)
        return response or redirect(self.inspect_url)

    def act(self, form: forms.Form) -> HttpResponse | None:
        raise NotImplementedError

    def success(self, message: Any, **values: Any) -> None:
        messages.success(self.request, str(message) % values if values else str(message))

    def emailed(self, link: DownloadLink, sent_message: Any) -> None:
        """Tell the editor how the desk's email of ``link`` went: sent (``sent_message``), or
        not yet (it is retried on its own; the timeline shows when it goes)."""
        email = desk.emailed(link)
        values = {"link": link.pk, "email": self.object.email}
        if email is not None and email.status == OutboundEmail.Status.SENT:
            self.success(sent_message, **values)
        elif email is not None and email.attempts:
            values["error"] = email.last_error
            message = _(
                "Link #%(link)s issued, but the email to %(email)s could not be sent yet "
                "(%(error)s). It is tried again automatically; the timeline shows when it goes."
            )
            messages.warning(self.request, str(message) % values)
        else:
            message = _("Link #%(link)s issued; the email to %(email)s is on its way.")
            self.success(message, **values)


class ResendView(PurchaseActionView):
    action = desk.RESEND
    page_title = _("Resend the delivery email")
    description = _(
        "The buyer gets the delivery email again with a new download link (the product's link "
        "lifetime and download limit). Earlier links keep working until they expire."
    )
    confirm_label = _("Yes, send it")

    def act(self, form: forms.Form) -> HttpResponse | None:
        issued = desk.resend_delivery_email(self.object, user=self.request.user)
        self.emailed(issued.link, _("Delivery email sent to %(email)s with link #%(link)s."))
        return None


class IssueLinkView(PurchaseActionView):
    action = desk.ISSUE_LINK
    form_class = IssueLinkForm
    page_title = _("Issue a new link")
    description = _(
        "A new download link with the lifetime and limit you choose. Earlier links keep working "
        "until they expire."
    )
    confirm_label = _("Issue the link")
    result_template_name = "wagtail_paid_delivery/admin/link_issued.html"

    def get_initial(self) -> dict[str, Any]:
        lifetime, limit = links.link_rules(self.object)
        return {
            "lifetime_hours": int(lifetime.total_seconds() // 3600) or 1,
            "download_limit": limit,
        }

    def act(self, form: forms.Form) -> HttpResponse | None:
        data = form.cleaned_data
        send = bool(data["send_email"])
        if send and desk.refusal(desk.RESEND, self.object):
            form.add_error("send_email", desk.refusal(desk.RESEND, self.object))
            return self.form_invalid(form)
        issued = desk.issue_new_link(
            self.object,
            user=self.request.user,
            lifetime=timedelta(hours=data["lifetime_hours"]),
            download_limit=data["download_limit"],
            send_email=send,
        )
        if send:
            self.emailed(issued.link, _("Link #%(link)s issued and emailed to %(email)s."))
            return None
        # Shown once, in this response only: not in a message (stored in the session or a
        # cookie), not in the log.
        context = self.get_context_data(form=form, issued=issued)
        response = TemplateResponse(self.request, self.result_template_name, context)
        response["Cache-Control"] = "no-store"
        return response


class LinkActionView(PurchaseActionView):
    """An action on one of the purchase's links (``link_pk`` in the URL)."""

    @cached_property
    def link(self) -> DownloadLink:
        return get_object_or_404(DownloadLink, pk=self.kwargs["link_pk"], purchase=self.object)

    def refusal(self) -> str:
        return desk.link_refusal(self.link)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        overview = timeline.link_overview(self.object)
        context["link_summary"] = next(s for s in overview if s.link.pk == self.link.pk)
        return context


class ExtendLinkView(LinkActionView):
    action = desk.EXTEND_LINK
    form_class = ExtendLinkForm
    page_title = _("Extend a link")
    description = _(
        "The link works again (or longer) until the time you choose, counted from now. Its "
        "download counts stay as they are."
    )
    confirm_label = _("Extend the link")

    def get_initial(self) -> dict[str, Any]:
        lifetime, _limit = links.link_rules(self.object)
        return {"lifetime_hours": int(lifetime.total_seconds() // 3600) or 1}

    def act(self, form: forms.Form) -> HttpResponse | None:
        link = desk.extend_link(
            self.link,
            user=self.request.user,
            lifetime=timedelta(hours=form.cleaned_data["lifetime_hours"]),
        )
        self.success(_("Link #%(link)s extended."), link=link.pk)
        return None


class ResetLinkView(LinkActionView):
    action = desk.RESET_LINK
    page_title = _("Reset a link's download counts")
    description = _(
        "Every file of this link can be downloaded as many times as its limit allows again. "
        "The download log keeps the downloads made so far."
    )
    confirm_label = _("Yes, reset the counts")

    def act(self, form: forms.Form) -> HttpResponse | None:
        had = desk.reset_link_counts(self.link, user=self.request.user)
        self.success(_("Link #%(link)s: %(n)s downloads reset."), link=self.link.pk, n=had)
        return None


class ReleaseActivationView(PurchaseActionView):
    """Release one of the purchase's license key activations (``activation_pk`` in the URL)."""

    action = desk.RELEASE_ACTIVATION
    page_title = _("Release a license activation")
    description = _(
        "The app instance stops counting against the key's activation limit, so the buyer can "
        "activate the key elsewhere. The app learns it the next time it validates the key."
    )
    confirm_label = _("Release it")

    @cached_property
    def activation(self) -> LicenseActivation:
        return get_object_or_404(
            LicenseActivation, pk=self.kwargs["activation_pk"], license__purchase=self.object
        )

    def refusal(self) -> str:
        return desk.activation_refusal(self.activation)

    def act(self, form: forms.Form) -> HttpResponse | None:
        desk.release_activation(self.activation, user=self.request.user)
        self.success(
            _("Activation on %(instance)s released."), instance=self.activation.instance_id
        )
        return None


class RevokeView(PurchaseActionView):
    action = desk.REVOKE
    permission_required = permissions.REVOKE
    form_class = RevokeForm
    page_title = _("Revoke access")
    description = _(
        "The buyer's links stop working at once. A suspension can be lifted with “Restore "
        "access”; a revocation is final: no webhook and no editor brings the purchase back. "
        "Money is not refunded here: refund in Stripe's Dashboard."
    )
    confirm_label = _("Take access away")
    destructive = True

    def get_form_kwargs(self) -> dict[str, Any]:
        kwargs = super().get_form_kwargs()
        kwargs["can_suspend"] = not desk.refusal(desk.SUSPEND, self.object)
        return kwargs

    def act(self, form: forms.Form) -> HttpResponse | None:
        final = form.cleaned_data["how"] == "revoke"
        desk.revoke_access(
            self.object, user=self.request.user, reason=form.cleaned_data["reason"], final=final
        )
        self.success(_("Access revoked for good.") if final else _("Access suspended."))
        return None


class RestoreView(PurchaseActionView):
    action = desk.RESTORE
    permission_required = permissions.REVOKE
    page_title = _("Restore access")
    description = _(
        "The purchase is paid again: its links work where they have not expired. If it was "
        "suspended because of a dispute in Stripe, access comes back before Stripe decides it; "
        "a lost dispute later ends it for good."
    )
    confirm_label = _("Yes, restore access")

    def act(self, form: forms.Form) -> HttpResponse | None:
        desk.restore_access(self.object, user=self.request.user)
        self.success(_("Access restored."))
        return None


class CorrectEmailView(PurchaseActionView):
    action = desk.CORRECT_EMAIL
    form_class = CorrectEmailForm
    page_title = _("Correct the email address")
    description = _(
        "For a buyer who mistyped their address. The new address is where the delivery email "
        "and the buyer's resend requests go from now on."
    )
    confirm_label = _("Correct the address")

    def get_initial(self) -> dict[str, Any]:
        return {"email": self.object.email, "send_link": self.object.status == S.PAID}

    def act(self, form: forms.Form) -> HttpResponse | None:
        data = form.cleaned_data
        send = bool(data["send_link"])
        if send and self.object.status != S.PAID:
            form.add_error("send_link", desk.refusal(desk.ISSUE_LINK, self.object))
            return self.form_invalid(form)
        issued = desk.correct_email(
            self.object,
            user=self.request.user,
            email=data["email"],
            revoke_links=bool(data["revoke_links"]),
            send_link=send,
        )
        if issued is not None:
            self.emailed(issued.link, _("Address corrected; link #%(link)s sent to %(email)s."))
        else:
            self.success(_("Address corrected."))
        return None


class RefundForm(forms.Form):
    amount = forms.DecimalField(label=_("Amount to refund"), max_digits=14)
    reason = forms.ChoiceField(
        label=_("Reason (sent to Stripe)"),
        choices=refunds.REASONS,
        initial="requested_by_customer",
        widget=forms.RadioSelect,
    )
    note = forms.CharField(
        label=_("Note"),
        max_length=2000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("Kept in the log with your name; not sent to the buyer or to Stripe."),
    )
    #: Made when the form is shown, sent to Stripe as the idempotency key: a confirmation sent
    #: twice refunds once.
    key = forms.RegexField(regex=refunds.KEY, widget=forms.HiddenInput)

    def __init__(self, *args: Any, purchase: Purchase, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.purchase = purchase
        left = currencies.format_price(refunds.amount_left(purchase), purchase.currency)
        self.fields["amount"].label = _("Amount to refund (%(currency)s)") % {
            "currency": purchase.currency.upper()
        }
        self.fields["amount"].help_text = _("At most %(left)s: what is left to refund.") % {
            "left": left
        }

    def clean_amount(self) -> int:
        minor = refunds.to_minor(self.cleaned_data["amount"], self.purchase.currency)
        if minor is None:
            raise forms.ValidationError(
                _("%(currency)s amounts have at most %(places)s decimal places.")
                % {
                    "currency": self.purchase.currency.upper(),
                    "places": currencies.exponent(self.purchase.currency),
                }
            )
        try:
            refunds.check(self.purchase, minor)
        except desk.NotApplicable as refused:
            raise forms.ValidationError(str(refused)) from None
        return minor


#: What the purchase became after a refund, for the editor (``fulfillment`` outcomes).
REFUND_OUTCOMES = {
    "refunded": _("The purchase is refunded: the buyer's access ended."),
    "partially_refunded": _(
        "A partial refund: the buyer keeps access (PARTIAL_REFUND_POLICY is “keep”)."
    ),
    "": _("The purchase is updated when Stripe's event about the refund arrives."),
}


class RefundView(PurchaseActionView):
    action = desk.REFUND
    permission_required = permissions.REFUND
    form_class = RefundForm
    page_title = _("Refund through Stripe")
    description = _(
        "The money goes back to the buyer's card or account through Stripe. A refund of "
        "everything that is left ends the buyer's access for good; a partial refund keeps it "
        "(unless the site's PARTIAL_REFUND_POLICY is “revoke”), as when you refund in Stripe's "
        "Dashboard. A refund cannot be undone."
    )
    confirm_label = _("Refund")
    destructive = True

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "purchase": self.object}

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # A confirmation sent again (a double click, the browser's back button) after it
        # refunded: say what it did, before the checks that would now refuse it.
        earlier = refunds.repeated(self.object, str(request.POST.get("key", "")))
        if earlier is not None:
            self.refunded(earlier)
            return redirect(self.inspect_url)
        return super().post(request, *args, **kwargs)

    def get_initial(self) -> dict[str, Any]:
        left = refunds.amount_left(self.object)
        return {
            "amount": currencies.to_major(left, self.object.currency),
            "key": secrets.token_hex(16),
        }

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        purchase = self.object
        context["extra_facts"] = [
            (_("Charged"), payments.amount_paid(purchase).display),
            (
                _("Refunded so far"),
                currencies.format_price(purchase.amount_refunded, purchase.currency),
            ),
            (
                _("Left to refund"),
                currencies.format_price(refunds.amount_left(purchase), purchase.currency),
            ),
        ]
        return context

    def act(self, form: forms.Form) -> HttpResponse | None:
        data = form.cleaned_data
        try:
            done = refunds.refund(
                self.object,
                user=self.request.user,
                amount=data["amount"],
                reason=data["reason"],
                note=data["note"],
                key=data["key"],
            )
        except stripe_api.StripeUnavailable:
            form.add_error(
                None,
                _(
                    "Stripe could not be reached: nothing is known to be refunded. Press "
                    "“Refund” again when Stripe answers; this confirmation refunds once, however "
                    "often it is sent."
                ),
            )
            return self.form_invalid(form)
        except stripe_api.StripeRefused as refused:
            messages.error(
                self.request,
                str(_("Stripe refused the refund: %(why)s")) % {"why": refused.user_message},
            )
            return redirect(self.request.path)
        self.refunded(done)
        return None

    def refunded(self, done: refunds.Refunded) -> None:
        values = {"money": done.display, "refund": done.refund_id}
        if done.repeated:
            message = _(
                "This confirmation was already carried out: refund %(refund)s of %(money)s. "
                "Nothing was refunded twice."
            )
            messages.info(self.request, str(message) % values)
            return
        text = str(_("Refunded %(money)s through Stripe (refund %(refund)s).")) % values
        after = REFUND_OUTCOMES.get(done.outcome)
        stays = str(_("The purchase stays %(status)s.")) % {
            "status": self.object.get_status_display()
        }
        parts = [text, str(after) if after is not None else stays]
        if done.stripe_status not in ("succeeded", ""):
            parts.append(str(_("Stripe's refund is %(status)s.")) % {"status": done.stripe_status})
        messages.success(self.request, " ".join(parts))


def product_pages() -> Any:
    """Every product page (of any product page model), for the grant form."""
    page_model = Purchase._meta.get_field("product").related_model
    models = [
        m
        for m in apps.get_models()
        if issubclass(m, ProductPageMixin) and issubclass(m, page_model)
    ]
    return page_model._default_manager.type(*models).order_by("title")  # type: ignore[union-attr,attr-defined]


class GrantForm(forms.Form):
    product = forms.ModelChoiceField(label=_("Product"), queryset=Purchase.objects.none())
    email = forms.EmailField(label=_("Email address"))
    reason = forms.CharField(
        label=_("Reason"),
        max_length=500,
        help_text=_("A press copy, a support case… Kept in the log."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["product"].queryset = product_pages()  # type: ignore[attr-defined]


class GrantView(PermissionCheckedMixin, WagtailAdminTemplateMixin, FormView):
    """A complimentary copy: a new purchase, paid without Stripe, delivered by email."""

    model = Purchase
    any_permission_required = [permissions.VIEW]
    permission_required = permissions.GRANT
    template_name = "wagtail_paid_delivery/admin/grant.html"
    form_class = GrantForm
    page_title = _("Grant a complimentary copy")
    header_icon = "clipboard-list"
    index_url_name: str | None = None
    inspect_url_name: str | None = None

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        return [
            *self.breadcrumbs_items,
            {"url": reverse(self.index_url_name or ""), "label": _("Purchases")},
            {"url": "", "label": self.get_page_title()},
        ]

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["cancel_url"] = reverse(self.index_url_name or "")
        context["action_url"] = self.request.path
        return context

    def form_valid(self, form: forms.Form) -> HttpResponse:
        data = form.cleaned_data
        purchase = desk.grant(
            data["product"].specific,
            user=self.request.user,
            email=data["email"],
            reason=data["reason"],
        )
        messages.success(
            self.request,
            str(_("Complimentary copy of “%(product)s” granted to %(email)s."))
            % {
                "product": purchase.product_title,
                "email": purchase.email,
            },
        )
        return redirect(reverse(self.inspect_url_name or "", args=(quote(purchase.pk),)))


#: Desk action → (URL path under the purchase, view, permission).
ACTION_VIEWS: dict[str, tuple[str, type[PurchaseActionView]]] = {
    desk.RESEND: ("resend/", ResendView),
    desk.ISSUE_LINK: ("link/", IssueLinkView),
    desk.EXTEND_LINK: ("links/<int:link_pk>/extend/", ExtendLinkView),
    desk.RESET_LINK: ("links/<int:link_pk>/reset/", ResetLinkView),
    desk.CORRECT_EMAIL: ("email/", CorrectEmailView),
    desk.REVOKE: ("revoke/", RevokeView),
    desk.RESTORE: ("restore/", RestoreView),
    desk.REFUND: ("refund/", RefundView),
    desk.RELEASE_ACTIVATION: (
        "license/activations/<int:activation_pk>/release/",
        ReleaseActivationView,
    ),
}
ACTION_PERMISSIONS = {
    action: view.permission_required for action, (_path, view) in ACTION_VIEWS.items()
}
#: The buttons on the inspect view, in order: (action, label, CSS class).
INSPECT_ACTIONS = [
    (desk.RESEND, _("Resend the delivery email"), "button"),
    (desk.ISSUE_LINK, _("Issue a new link"), "button button-secondary"),
    (desk.CORRECT_EMAIL, _("Correct the email address"), "button button-secondary"),
    (desk.RESTORE, _("Restore access"), "button button-secondary"),
    (desk.REFUND, _("Refund through Stripe"), "button button-secondary no"),
    (desk.REVOKE, _("Revoke access"), "button button-secondary no"),
]


# The viewset --------------------------------------------------------------------------------


class PurchaseViewSet(DeskViewSetMixin, ModelViewSet):
    """Purchases: listing (search, filters, sort, export) and inspect with timeline and
    actions. No add, edit, delete or copy view: checkout makes purchases, the state machine
    moves them, and the desk's actions are the only changes an editor makes."""

    model = Purchase
    url_prefix = "shop/purchases"
    url_namespace = "wagtail_paid_delivery_purchases"
    icon = "clipboard-list"
    menu_label = _("Purchases")
    #: Purchases are not content: no reference index rows for them.
    add_to_reference_index = False
    copy_view_enabled = False
    inspect_view_enabled = True
    index_view_class = PurchaseIndexView
    inspect_view_class = PurchaseInspectView
    filterset_class = PurchaseFilterSet
    #: Django ORM search (``icontains``) over the ids a buyer or Stripe quotes.
    search_fields = [
        "order_number",
        "email",
        "stripe_checkout_session_id",
        "stripe_payment_intent_id",
        "public_id",
    ]
    search_backend_name = None
    list_per_page = 50
    ordering = "-created_at"
    #: Export (CSV, XLSX): every purchase the filters and search select, all pages.
    list_export = [
        "order_number",
        "public_id",
        "created_at",
        "product_title",
        "email",
        "amount_major",
        "currency",
        "amount_refunded_major",
        "status",
        "status_reason",
        "source",
        "livemode",
        "paid_at",
        "refunded_at",
        "revoked_at",
        "delivery_email_sent_at",
        "stripe_checkout_session_id",
        "stripe_payment_intent_id",
    ]
    export_headings = {
        "public_id": _("Purchase id"),
        "created_at": _("Created"),
        "amount_major": _("Price"),
        "amount_refunded_major": _("Amount refunded"),
        "livemode": _("Live mode"),
    }
    export_filename = "purchases"

    def get_inspect_view_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_inspect_view_kwargs(
            action_url_names={a: self.get_url_name(a.rsplit(".", 1)[1]) for a in ACTION_VIEWS},
            purchase_url_name=self.get_url_name("inspect"),
            **kwargs,
        )

    def get_index_view_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_index_view_kwargs(grant_url_name=self.get_url_name("grant"), **kwargs)

    def action_view(self, action: str) -> Any:
        _path, view_class = ACTION_VIEWS[action]
        return view_class.as_view(
            index_url_name=self.get_url_name("index"),
            inspect_url_name=self.get_url_name("inspect"),
        )

    def get_urlpatterns(self) -> list[Any]:
        patterns = [
            path("", self.index_view, name="index"),
            path("results/", self.index_results_view, name="index_results"),
            path("<int:pk>/", self.inspect_view, name="inspect"),
            path(
                "grant/",
                GrantView.as_view(
                    index_url_name=self.get_url_name("index"),
                    inspect_url_name=self.get_url_name("inspect"),
                ),
                name="grant",
            ),
        ]
        for action, (route, _view) in ACTION_VIEWS.items():
            name = action.rsplit(".", 1)[1]
            patterns.append(path(f"<int:pk>/{route}", self.action_view(action), name=name))
        return patterns


class ShopViewSetGroup(ModelViewSetGroup):
    """The "Shop" menu. Other parts of the desk join it with
    ``menu_hook = "register_paid_delivery_shop_menu_item"`` (or a hook of that name)."""

    menu_label = _("Shop")
    menu_name = "shop"
    menu_icon = "tag"
    menu_order = 250
    submenu_hook = "register_paid_delivery_shop_menu_item"
    items = (PurchaseViewSet,)
