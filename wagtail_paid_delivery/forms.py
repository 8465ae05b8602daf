"""Forms: the product page's admin form (the price in major units, what publishing requires)
and the buyer's resend form."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _
from wagtail.admin.forms import WagtailAdminPageForm

from . import currencies, stripe_api
from .prices import stripe_price_problems

if TYPE_CHECKING:  # lazy translations are str or Promise; the alias exists only for mypy
    from django_stubs_ext import StrOrPromise


class ProductPageForm(WagtailAdminPageForm):
    """Editors type 12.50 and pick a currency; the page stores 1250 minor units, as Stripe does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "price_amount" in self.fields:
            model_field = self.fields["price_amount"]
            self.fields["price_amount"] = forms.DecimalField(
                label=model_field.label,
                help_text=_(
                    "What the buyer pays, for example 12.50 (USD) or 1200 (JPY); the minimum "
                    "when buyers pay what they want."
                ),
                required=model_field.required,
                min_value=Decimal("0"),
            )
            amount = self.instance.price_amount
            currency = self.instance.currency or "USD"
            if amount is not None and not self.is_bound:
                self.initial["price_amount"] = currencies.to_major(amount, currency)
        if "past_buyers_get" in self.fields:
            # Radio buttons; a form posted without the field (an older form) keeps the policy.
            field = self.fields["past_buyers_get"]
            field.required = False
            field.widget = forms.RadioSelect(choices=field.choices)
        if "notify_buyers" in self.fields:
            # A choice for one publish: every edit starts unticked, so the next publish tells
            # nobody unless the editor asks again (the revision published keeps the choice).
            self.initial["notify_buyers"] = False

    def clean_past_buyers_get(self) -> str:
        return self.cleaned_data.get("past_buyers_get") or self.instance.past_buyers_get

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self._clean_price(cleaned)
        if cleaned.get("pay_what_you_want") and cleaned.get("stripe_price_id"):
            self.add_error(
                "stripe_price_id",
                _(
                    "Pay what you want sells through a Price the shop makes itself. Leave the "
                    "Stripe Price id empty, or turn pay what you want off."
                ),
            )
        bundled = self._check_bundle_items()
        if cleaned.get("notify_buyers"):
            self._require_update_copy(cleaned)
        if not self.is_deferred_validation:
            self._check_stripe_price(cleaned)
            if not bundled:
                self._require_files()
        return cleaned

    def _check_bundle_items(self) -> bool:
        """The bundle's rules (``ProductPageMixin.bundle_problems``), each shown on its row;
        whether the page includes any product (then it needs no files of its own)."""
        formset = self.formsets.get("bundle_items")
        if formset is None:
            return False
        formset.is_valid()  # the rows' cleaned_data (see _require_files)
        rows = [
            form
            for form in formset.forms
            if getattr(form, "cleaned_data", None)
            and form.cleaned_data.get("product") is not None
            and not (formset.can_delete and formset._should_delete_form(form))
        ]
        chosen = [form.cleaned_data["product"] for form in rows]
        problems = self.instance.bundle_problems(chosen, publishing=not self.is_deferred_validation)
        for index, problem in problems.items():
            if index < 0:
                self.add_error(None, problem)
            else:
                rows[index].add_error("product", problem)
        return bool(chosen)

    def _clean_price(self, cleaned: dict[str, Any]) -> None:
        major = cleaned.get("price_amount")
        currency = cleaned.get("currency")
        if major is None or not currency:
            return
        try:
            major = Decimal(major)
        except InvalidOperation:  # pragma: no cover - DecimalField already refused it
            return
        places = currencies.exponent(currency)
        minor = major.scaleb(places)
        if minor != minor.to_integral_value():
            message = (
                _("%(currency)s has no minor unit: enter a whole number.")
                if places == 0
                else _("%(currency)s allows at most %(places)d decimal places.")
            )
            self.add_error(
                "price_amount",
                ValidationError(message, params={"currency": currency, "places": places}),
            )
            return
        if minor <= 0:
            self.add_error("price_amount", _("Enter a price above zero."))
            return
        cleaned["price_amount"] = int(minor)

    def _check_stripe_price(self, cleaned: dict[str, Any]) -> None:
        """At publish, a Stripe Price id must exist and charge exactly the page's price."""
        price_id = cleaned.get("stripe_price_id")
        amount = cleaned.get("price_amount")
        currency = cleaned.get("currency")
        if not price_id or not isinstance(amount, int) or not currency:
            return
        if any(self.has_error(f) for f in ("stripe_price_id", "price_amount", "currency")):
            return
        message: StrOrPromise | None
        try:
            problems = stripe_price_problems(price_id, amount, currency)
        except stripe_api.StripeUnavailable:
            message = _(
                "Stripe could not be reached to check this Price id. Try publishing again in "
                "a minute (you can save a draft meanwhile)."
            )
        except stripe_api.StripeKeyRejected:
            message = _(
                "Stripe rejected this site's secret key, so the Price id cannot be checked. "
                "Ask whoever runs the site to fix STRIPE_SECRET_KEY, or leave this empty."
            )
        else:
            message = problems[0] if problems else None
        if message:
            self.add_error("stripe_price_id", message)

    def _require_update_copy(self, cleaned: dict[str, Any]) -> None:
        for name in ("update_subject", "update_message"):
            if name in self.fields and not str(cleaned.get(name) or "").strip():
                self.add_error(name, _("Write the update email before asking to send it."))

    def _require_files(self) -> None:
        formset = self.formsets.get("files")
        if formset is None:
            return
        # A ClusterForm cleans itself before its formsets, so the file forms have no cleaned_data
        # yet: clean them now (Django caches the result for the formset's own validation).
        formset.is_valid()
        for form in formset.forms:
            cleaned = getattr(form, "cleaned_data", None)
            if cleaned is None or (formset.can_delete and formset._should_delete_form(form)):
                continue
            if cleaned.get("file") or (form.instance.pk and form.instance.file):
                return
        raise ValidationError(
            _("Add at least one file before publishing: buyers need something to download."),
            code="no_files",
        )


class ResendForm(forms.Form):
    """ "Email me my links again": an address, and optionally one product."""

    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "required": True}),
    )
    #: Optional: only this product's links. Filled from ``?product=`` (a product page's link).
    product = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    #: Optional: the token of the link whose page showed the form (``download_refused.html``).
    #: Whoever holds a link may learn its purchase's state, so the answer can be exact.
    link = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)


class LibrarySignInForm(forms.Form):
    """The library without a password: the address to send a one-time sign-in link to."""

    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "required": True}),
    )
