"""The buyer's language: what a purchase records at checkout, and where it is spoken again.

The language is the one the site chose for the request that pressed the Buy button
(``request.LANGUAGE_CODE``, which ``LocaleMiddleware`` sets from the URL, the language cookie or
``Accept-Language``); a site that does not choose per request stores none, and its buyers read
``LANGUAGE_CODE``. It is stored on the purchase
(``Purchase.language``) and spoken again where the buyer is no longer in that request: the
emails the outbox sends (rendered in a worker) and the pages a link leads to (the download page,
the success page), which may be opened in another browser. Stripe Checkout is told it too, when
Stripe speaks it (``stripe_locale``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.utils import translation

#: The locales Stripe Checkout speaks (its ``locale`` parameter), lower-cased, besides "auto".
#: Stripe's list: https://docs.stripe.com/js/appendix/supported_locales
STRIPE_CHECKOUT_LOCALES = {
    code.lower(): code
    for code in (
        "bg cs da de el en en-GB es es-419 et fi fil fr fr-CA hr hu id it ja ko lt lv ms mt nb "
        "nl pl pt pt-BR ro ru sk sl sv th tr vi zh zh-HK zh-TW"
    ).split()
}

#: The longest language code a purchase stores (``Purchase.language``).
MAX_LENGTH = 35

#: Django's codes for the same languages where they differ from Stripe's.
STRIPE_ALIASES = {"no": "nb", "zh-hans": "zh", "zh-hant": "zh-tw", "tl": "fil"}


def stripe_locale(language: str | None) -> str | None:
    """Stripe Checkout's ``locale`` for ``language`` (a Django code such as "de", "pt-br"), or
    None when Stripe does not speak it: first the exact code, then the language alone
    ("de-at" is "de")."""
    code = (language or "").strip().lower().replace("_", "-")
    if not code:
        return None
    code = STRIPE_ALIASES.get(code, code)
    found = STRIPE_CHECKOUT_LOCALES.get(code)
    if found is None:
        base = code.split("-")[0]
        found = STRIPE_CHECKOUT_LOCALES.get(STRIPE_ALIASES.get(base, base))
    return found


def supported(language: str | None) -> str | None:
    """``language`` as one of the site's ``LANGUAGES`` (its nearest variant), else None: a
    language the site no longer offers is not spoken."""
    if not language:
        return None
    try:
        return translation.get_supported_language_variant(language)
    except LookupError:
        return None


@contextmanager
def speaking(language: str | None) -> Iterator[str]:
    """Render in ``language`` (a purchase's) when the site offers it, else in the active one.

    Yields the language in effect, for a ``Content-Language`` header.
    """
    chosen = supported(language)
    if chosen is None:
        yield translation.get_language() or settings.LANGUAGE_CODE
        return
    with translation.override(chosen):
        yield chosen
