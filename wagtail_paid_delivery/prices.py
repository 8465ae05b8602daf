"""When an existing Stripe Price may be sold as a product's price.

One rule for both places that ask: the page editor at publish (the messages are shown to the
editor) and checkout (they are logged, and the sale is refused). It imports no models, so the
product page's form can use it without an import circle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from . import currencies, metadata, stripe_api
from .conf import app_settings

if TYPE_CHECKING:  # lazy translations are str or Promise; the alias exists only for mypy
    from django_stubs_ext import StrOrPromise


def stripe_price_problems(price_id: str, amount: int, currency: str) -> list[StrOrPromise]:
    """Why Stripe Price ``price_id`` cannot charge ``amount`` minor units of ``currency``.

    Empty when it can. Asks Stripe; raises ``stripe_api.StripeUnavailable`` when Stripe cannot
    be reached and ``stripe_api.StripeKeyRejected`` when it refused the site's key (the caller
    decides whether to wait or refuse; neither says anything about the Price).
    """
    try:
        price = stripe_api.retrieve_price(price_id)
    except stripe_api.StripeKeyRejected:
        raise
    except ImproperlyConfigured:
        return [
            _(
                "Stripe is not configured on this site, so the Price id cannot be checked. "
                "Leave it empty to charge the price above."
            )
        ]
    except stripe_api.StripePermanent as exc:
        if exc.code == "resource_missing":
            return [_("Stripe has no Price with this id (in this account and mode).")]
        return [_("Stripe refused this Price id: %(error)s") % {"error": exc.user_message}]
    except stripe_api.StripeRefused as exc:
        return [_("Stripe refused the check: %(error)s") % {"error": exc.user_message}]
    return price_problems(price, amount, currency)


def custom_price_id(page: Any) -> str:
    """The Stripe Price a pay-what-you-want ``page`` sells through, made when missing.

    Made at the first checkout and again when the page's minimum or currency changed (the old
    one is left to Stripe: sessions already open still pay through it). Stored on the page's
    row only (no new revision): it is a cache of something Stripe holds, not editorial content.
    Raises what ``stripe_api.create_custom_price`` raises.
    """
    if page.custom_price_id and page.custom_price_terms == page.custom_price_wanted:
        return str(page.custom_price_id)
    tags = {metadata.INSTALLATION: app_settings.installation_id, metadata.PRODUCT: str(page.pk)}
    terms = page.custom_price_wanted
    price = stripe_api.create_custom_price(
        currency=page.currency,
        minimum=page.price_amount,
        product_name=page.title[:250],
        metadata=tags,
        idempotency_key=f"wpd-custom-price-{page.pk}-{page.currency}-{page.price_amount}",
    )
    type(page)._default_manager.filter(pk=page.pk).update(
        custom_price_id=price.id, custom_price_terms=terms
    )
    page.custom_price_id, page.custom_price_terms = price.id, terms
    return str(price.id)


def price_problems(price: Any, amount: int, currency: str) -> list[StrOrPromise]:
    """Why ``price`` cannot charge ``amount`` minor units of ``currency``; empty when it can."""
    problems: list[StrOrPromise] = []
    if getattr(price, "active", True) is False:
        problems.append(
            _("This Stripe Price is archived. Use an active Price, or leave this empty.")
        )
    if getattr(price, "type", "one_time") != "one_time":
        problems.append(
            _("This Stripe Price is recurring. Use a one-time Price, or leave this empty.")
        )
    unit_amount = getattr(price, "unit_amount", None)
    price_currency = str(getattr(price, "currency", "")).upper()
    if unit_amount is None:
        problems.append(
            _("This Stripe Price has no fixed amount. Use a Price with a fixed amount.")
        )
    elif unit_amount != amount or price_currency != currency.upper():
        problems.append(
            _(
                "This Stripe Price charges %(stripe)s, but this page says %(page)s. Change the "
                "price above, or use a Price that matches it."
            )
            % {
                "stripe": currencies.format_price(unit_amount, price_currency or currency),
                "page": currencies.format_price(amount, currency),
            }
        )
    return problems
