"""Currencies Stripe charges in, with how many minor units make one major unit.

Stripe amounts are integers in the currency's smallest unit: cents for USD, but whole yen for JPY
(a "zero-decimal" currency) and thousandths for the three-decimal ones.
"""

from __future__ import annotations

from decimal import Decimal

from django.utils import formats

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
# https://docs.stripe.com/currencies#three-decimal
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())

# A practical subset of Stripe's presentment currencies; sites needing another can add it.
SUPPORTED = sorted(
    {
        *"USD EUR GBP CAD AUD NZD CHF SEK NOK DKK PLN CZK HUF RON BGN ISK".split(),
        *"MXN BRL ARS COP PEN SGD HKD TWD INR IDR MYR PHP THB ILS AED SAR".split(),
        *"ZAR TRY NGN KES EGP CNY".split(),
        *ZERO_DECIMAL,
        *THREE_DECIMAL,
    }
)
CHOICES = [(code, code) for code in SUPPORTED]

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "KRW": "₩", "INR": "₹"}


def exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(amount: int, currency: str) -> Decimal:
    """Minor units (what Stripe stores) to a Decimal in major units."""
    return Decimal(amount).scaleb(-exponent(currency))


def format_price(amount: int, currency: str) -> str:
    """A price for people: localized digits, the currency's own number of decimals."""
    code = currency.upper()
    places = exponent(code)
    number = formats.number_format(
        to_major(amount, code), decimal_pos=places, use_l10n=True, force_grouping=True
    )
    symbol = SYMBOLS.get(code)
    if symbol:
        return f"{symbol}{number}"
    return f"{number}\u00a0{code}"
