"""The one place the app's settings are read.

Everything lives in one ``WAGTAIL_PAID_DELIVERY`` dict. Values are read when used, never at import
time, and the cache is dropped on ``setting_changed`` so ``override_settings`` works in tests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.signals import setting_changed
from django.core.validators import validate_email
from django.dispatch import receiver

SETTINGS_NAME = "WAGTAIL_PAID_DELIVERY"

#: Every key the app reads, with its default. The README's settings table documents each one.
DEFAULTS: dict[str, Any] = {
    # Stripe secret key (sk_test_… / sk_live_… or a restricted rk_… key). Empty: checkout is off.
    "STRIPE_SECRET_KEY": "",
    # Webhook signing secrets (whsec_…). A list, so a rotated secret and its successor both verify.
    "STRIPE_WEBHOOK_SECRETS": [],
    # Base URL of a Stripe stand-in (stripe-mock, the sandbox emulator). None: Stripe itself.
    "STRIPE_API_BASE": None,
    # Seconds a webhook signature stays valid (stripe-python's own default), and how far ahead
    # of our clock its timestamp may be.
    "WEBHOOK_TOLERANCE": 300,
    # How long a download link works after it is issued. A product may override it.
    "LINK_LIFETIME": timedelta(hours=24),
    # Downloads allowed per file per link. None: unlimited. A product may override it.
    "DOWNLOAD_LIMIT": 5,
    # Marks this site's Checkout Sessions in their metadata, so other integrations on the same
    # Stripe account are told apart. None: derived from SECRET_KEY (stable while it is).
    "INSTALLATION_ID": None,
    # Callable (or dotted path to one) returning the Storage for product files.
    "STORAGE": "wagtail_paid_delivery.storage.PrivateProductStorage",
    # A partial refund (charge.refunded with less than the full amount): "keep" access (the
    # amount is recorded on the purchase) or "revoke" it (the purchase becomes refunded, final).
    # A full refund always revokes.
    "PARTIAL_REFUND_POLICY": "keep",
    # An open dispute (chargeback): "suspend" access until it is won, or "ignore" it (access
    # stays). Either way a lost dispute ends access, like a full refund.
    "DISPUTE_POLICY": "suspend",
    # How often a Stripe event whose processing failed is tried in all (the first try included).
    # After the last one the event stays `failed` (logged as an error) until `reprocess`.
    "MAX_EVENT_ATTEMPTS": 8,
    # Wait before retrying a failed event: doubled after each failure (1, 2, 4… minutes),
    # never longer than EVENT_RETRY_MAX_DELAY. timedelta or seconds.
    "EVENT_RETRY_DELAY": timedelta(minutes=1),
    "EVENT_RETRY_MAX_DELAY": timedelta(hours=6),
    # How often an email (delivery, resend) is tried in all, the first try included. After the
    # last one it stays `failed` (logged as an error) for the shop owner to see. With the
    # delays below, 50 attempts keep trying for about twelve hours.
    "MAX_EMAIL_ATTEMPTS": 50,
    # Wait before retrying an email whose send failed: doubled after each failure (1, 2, 4…
    # minutes), never longer than EMAIL_RETRY_MAX_DELAY, so a mail server that comes back is
    # used within that long. timedelta or seconds.
    "EMAIL_RETRY_DELAY": timedelta(minutes=1),
    "EMAIL_RETRY_MAX_DELAY": timedelta(minutes=15),
    # Addresses told about every new sale (product, amount, buyer, test or live, a link to the
    # purchase in the admin, which needs WAGTAILADMIN_BASE_URL). Staff who may view purchases
    # can also opt in on their Wagtail account page. Grants are not sales: no notice.
    "NEW_SALE_EMAILS": [],
    # Create (and keep up to date) django-q2 schedules for the sweeps of events and emails
    # (every minute) and reconciliation (every 10 minutes) after each `migrate`. False: schedule
    # them yourself.
    "SCHEDULES": True,
    # Update emails (a product published with "email past buyers"): how many are queued a
    # minute, one batch a minute, so a large list does not flood the mail server or its
    # sending limits. A whole number, at least 1 (E065).
    "UPDATE_EMAILS_PER_MINUTE": 60,
    # How long the unsubscribe link in an update email works (timedelta or seconds; at least a
    # day, E066). A buyer with an older email unsubscribes from the link in the next one.
    "UNSUBSCRIBE_LINK_LIFETIME": timedelta(days=365),
    # Also create a django-q2 schedule that runs Wagtail's `publish_scheduled` every minute, so
    # pages (and their update emails) go live at their scheduled time without cron. Off by
    # default: a site that runs `publish_scheduled` from cron must not run it twice (E067).
    "SCHEDULE_PUBLISHING": False,
    # What every order number begins with (up to 12 letters, digits or hyphens, such as
    # "SHOP-"), before its ten random symbols; see the README's "Receipts and order numbers".
    "ORDER_NUMBER_PREFIX": "",
    # Extra Stripe Checkout features, all off by default; see the README. Known keys:
    # allow_promotion_codes, automatic_tax, tax_id_collection, invoice_creation (bools),
    # locale ("auto", "de", …), require_terms (bool: the buyer must accept your terms of
    # service, set in the Stripe Dashboard) and terms_message (text shown beside that checkbox,
    # e.g. the EU withdrawal waiver for immediate digital delivery; needs require_terms).
    "CHECKOUT_OPTIONS": {},
    # Rate limits are (requests, seconds), or None for no limit (not advised). They count in
    # the cache named by Django's RATELIMIT_USE_CACHE setting (django-ratelimit's; "default"
    # when unset): use one all app processes share (Redis, Memcached, the database); a
    # per-process LocMemCache multiplies every limit by the processes (W004). A client is an
    # IPv4 address or an IPv6 /64; behind a proxy, make REMOTE_ADDR the client's address.
    #
    # checkout/<page id>/: Buy clicks per client. Over it, a 429 page "wait a few minutes",
    # and no Purchase or Stripe call. Far above what a shopper does (a repeated click reuses
    # its checkout anyway); mind many buyers behind one IPv4 address (offices, mobile CGNAT).
    "CHECKOUT_RATE_LIMIT": (30, 600),
    # The reverse proxies (addresses or networks, e.g. ["10.0.0.10", "127.0.0.1"]) whose
    # X-Forwarded-For the ClientAddressMiddleware believes, so the limits count per buyer, not
    # per proxy. Empty: REMOTE_ADDR is left as the server saw it.
    "TRUSTED_PROXIES": [],
    # resend/ ("email me my links again"): requests per client. Over it the page answers 429
    # "try again later", the same for everyone.
    "RESEND_RATE_LIMIT": (10, 3600),
    # resend/: requests per email address. Over it the answer is the usual one and nothing is
    # sent: silent, so the limit reveals nothing about the address.
    "RESEND_EMAIL_RATE_LIMIT": (3, 3600),
    # Deprecated and no longer read: the limits count in RATELIMIT_USE_CACHE (see above). Still
    # accepted so old settings load; naming another cache than RATELIMIT_USE_CACHE is E024.
    "RESEND_CACHE": None,
    # License keys (products with "license key activations" set): the Ed25519 private key that
    # signs them, as PEM or as the base64 of its 32 raw bytes. Keep it secret, like SECRET_KEY;
    # apps verify keys offline with its public key (shown in the admin's license keys screen).
    # None: keys are still issued, but not shown or validated until a key is set (E050).
    "LICENSE_SIGNING_KEY": None,
    # Rotation: public keys (base64 of 32 raw bytes) of earlier signing keys. The endpoint keeps
    # accepting keys they signed; buyers are shown keys signed with the current key.
    "LICENSE_RETIRED_PUBLIC_KEYS": [],
    # licenses/: validate, activate and deactivate requests per client. Over it, 429 JSON.
    "LICENSE_RATE_LIMIT": (60, 3600),
    # library/: also list paid purchases whose email equals the signed-in user's email (matched
    # case-insensitively), not only those linked to the user. Turn it on ONLY when your accounts'
    # email addresses are verified: otherwise anyone who signs up with a buyer's address sees
    # (and downloads) that buyer's purchases.
    "LIBRARY_MATCH_EMAIL": False,
    # library/ without a password: a buyer enters their email and gets a one-time sign-in link.
    # How long that link works (timedelta or seconds); it works once.
    "LIBRARY_SIGN_IN_LIFETIME": timedelta(minutes=20),
    # How long the library stays open in that browser after the link was used (timedelta or
    # seconds). The session lists the address's purchases and grants nothing else.
    "LIBRARY_SESSION_LIFETIME": timedelta(hours=1),
    # library/: sign-in requests (the email form) and sign-in link confirmations per client.
    # Over it, 429 "try again later", the same for everyone.
    "LIBRARY_RATE_LIMIT": (10, 3600),
    # library/: sign-in links asked for per email address. Over it the answer is the usual one
    # and nothing is sent: silent, so the limit reveals nothing about the address.
    "LIBRARY_EMAIL_RATE_LIMIT": (3, 3600),
    # How the bytes of a download leave, after the app checked and counted the request:
    # "django" (streamed by the app), "nginx" (X-Accel-Redirect to NGINX_INTERNAL_PREFIX),
    # "apache" (X-Sendfile with the file's absolute path; mod_xsendfile), "s3" (alias
    # "presigned": a redirect to a presigned storage URL that lives PRESIGNED_URL_LIFETIME).
    # See the README's "Serving files" for the web server configuration each one needs.
    "SERVE_BACKEND": "django",
    # nginx: the `internal` location that aliases the product storage's root (by default
    # PRIVATE_STORAGE_ROOT). Starts and ends with "/".
    "NGINX_INTERNAL_PREFIX": "/_paid_files/",
    # s3/presigned: seconds a presigned URL stays valid; only long enough to follow the redirect.
    "PRESIGNED_URL_LIFETIME": 30,
    # Pages that show a token (download page, refused and hand-off error pages, the success page
    # with its link, the library) send a strict Content-Security-Policy: scripts run only with
    # the response's nonce. These are the sources they may load styles, fonts and images from
    # (CSP source expressions; a missing key means ["'self'"]). STATIC_URL's origin (and
    # MEDIA_URL's, for images) is added when it is another host. Scripts cannot be allowed here.
    "DELIVERY_PAGE_CSP": {},
    # The buyer pages (success, download, refused links, resend, library, checkout unavailable)
    # render inside this layout template: the site's own base.html, for instance. The pages'
    # content goes in its block named LAYOUT_BLOCK and their title in its block "title" when it
    # has one. See the README's "The shop's pages in your layout" for what the layout gets.
    "LAYOUT_TEMPLATE": "wagtail_paid_delivery/layout.html",
    "LAYOUT_BLOCK": "content",
    # A download counts on the first request served on its hand-off (one button press). Later
    # requests on the same hand-off (resuming, a player's probe then fetch) are free for this
    # long after that count (timedelta or seconds); after it they count like a new download.
    "HANDOFF_WINDOW": timedelta(hours=1),
    # …and only while the responses served since that count promised (Content-Length) at most
    # this many times the file's size, the counted one included; past it the next request counts
    # like a new download. The nginx and Apache backends free only a single Range after byte 0
    # without If-Range; on the presigned backend every redirect counts.
    "HANDOFF_BYTE_BUDGET": 2,
    # How long `manage.py cleanup` (and its daily schedule) keeps records; each a timedelta,
    # seconds, or None (keep forever). A site may set only some keys; the others keep these
    # defaults. See the README's "Data we store".
    "RETENTION": {
        # Download events, and links once they expired: disputes and chargebacks need them
        # (card networks allow about 120 days, some longer). A disputed purchase's records
        # are kept whatever their age.
        "download_records": timedelta(days=180),
        # Processed and ignored Stripe events (their payloads hold buyers' names and emails).
        # At least 30 days: Stripe keeps events that long and may still send them again.
        # Failed or unprocessed events are never removed.
        "stripe_events": timedelta(days=90),
        # Purchases that were never paid and that Stripe reported expired or failed
        # (abandoned checkouts). Never younger than a Checkout Session's lifetime.
        "unpaid_purchases": timedelta(days=30),
        # Emails the outbox recorded (recipient address, what was sent, errors), counted from
        # when they were recorded: proof of delivery in a dispute. Never one still to be sent.
        "emails": timedelta(days=180),
    },
}

#: The periods ``RETENTION`` knows, with the shortest each may be.
RETENTION_MINIMUMS: dict[str, timedelta] = {
    "download_records": timedelta(days=1),
    "stripe_events": timedelta(days=30),
    "unpaid_purchases": timedelta(days=1),
    "emails": timedelta(days=1),
}

#: The directives ``DELIVERY_PAGE_CSP`` may set, each ``'self'`` unless set.
PAGE_CSP_DIRECTIVES = ("style-src", "font-src", "img-src")

#: A source expression a site may allow: a host or scheme source, or one of these keywords or a
#: hash. Nothing with whitespace, ";" or ",", which would end the directive or the policy.
_CSP_SOURCE = re.compile(
    r"(?:[^\s;,'\"]+|'(?:self|none|unsafe-inline|unsafe-hashes)'"
    r"|'sha(?:256|384|512)-[A-Za-z0-9+/_-]+={0,2}')"
)

#: What ``ORDER_NUMBER_PREFIX`` may be.
_ORDER_PREFIX = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9-]{0,11})?")
#: What ``LAYOUT_BLOCK`` may be: a block name, and nothing else, since the bridge template that
#: puts the pages into the layout is built with it (``layout.bridge``).
LAYOUT_BLOCK_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The keys ``CHECKOUT_OPTIONS`` accepts, with the type each value must have.
CHECKOUT_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "allow_promotion_codes": (bool,),
    "automatic_tax": (bool,),
    "tax_id_collection": (bool,),
    "invoice_creation": (bool,),
    "locale": (str, type(None)),
    "require_terms": (bool,),
    "terms_message": (str,),
}


class PaidDeliverySettings:
    """Attribute access to the settings dict, with defaults, validation and caching."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTINGS_NAME, {}) or {}
        if not isinstance(value, dict):
            raise ImproperlyConfigured(f"{SETTINGS_NAME} must be a dict.")
        unknown = sorted(set(value) - set(DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in {SETTINGS_NAME}: {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(DEFAULTS))}."
            )
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid {SETTINGS_NAME} key: {name!r}")
        if name not in self._cache:
            self._cache[name] = self.user_settings.get(name, DEFAULTS[name])
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()

    # Derived values, normalised so callers never repeat the same coercions.

    @property
    def webhook_secrets(self) -> list[str]:
        secrets = self.STRIPE_WEBHOOK_SECRETS
        if isinstance(secrets, str):
            # A single string is accepted for convenience; a list is the documented form.
            secrets = [secrets]
        return [s for s in secrets if s]

    @property
    def installation_id(self) -> str:
        if self.INSTALLATION_ID:
            return str(self.INSTALLATION_ID)
        digest = hashlib.sha256(
            f"wagtail-paid-delivery:{django_settings.SECRET_KEY}".encode()
        ).hexdigest()
        return digest[:16]

    @property
    def link_lifetime(self) -> timedelta:
        value = self.LINK_LIFETIME
        return value if isinstance(value, timedelta) else timedelta(seconds=int(value))

    @property
    def handoff_window(self) -> timedelta:
        return _as_timedelta(self.HANDOFF_WINDOW)

    def handoff_byte_budget(self, size: int) -> int:
        """Bytes a hand-off's responses may promise on one count, for a file of ``size``."""
        return int(max(float(self.HANDOFF_BYTE_BUDGET), 0) * max(size, 0))

    @property
    def event_retry_delay(self) -> timedelta:
        return _as_timedelta(self.EVENT_RETRY_DELAY)

    @property
    def event_retry_max_delay(self) -> timedelta:
        return _as_timedelta(self.EVENT_RETRY_MAX_DELAY)

    @property
    def delivery_page_csp(self) -> dict[str, list[str]]:
        """``DELIVERY_PAGE_CSP`` checked, with ``'self'`` for each directive it does not set."""
        value = self.DELIVERY_PAGE_CSP or {}
        key = f"{SETTINGS_NAME}['DELIVERY_PAGE_CSP']"
        if not isinstance(value, dict):
            raise ImproperlyConfigured(f"{key} must be a dict of directive: [sources].")
        unknown = sorted(set(value) - set(PAGE_CSP_DIRECTIVES))
        if unknown:
            raise ImproperlyConfigured(
                f"{key} sets {', '.join(map(repr, unknown))}; it may set only "
                f"{', '.join(PAGE_CSP_DIRECTIVES)} (scripts run only with the page's nonce)."
            )
        sources: dict[str, list[str]] = {}
        for directive in PAGE_CSP_DIRECTIVES:
            listed = value.get(directive, ["'self'"])
            if isinstance(listed, str) or not isinstance(listed, (list, tuple)):
                raise ImproperlyConfigured(f"{key}[{directive!r}] must be a list of sources.")
            bad = [s for s in listed if not isinstance(s, str) or not _CSP_SOURCE.fullmatch(s)]
            if bad:
                raise ImproperlyConfigured(
                    f"{key}[{directive!r}] has invalid sources: {', '.join(map(repr, bad))}."
                )
            sources[directive] = list(listed)
        return sources

    @property
    def order_number_prefix(self) -> str:
        """``ORDER_NUMBER_PREFIX`` checked: at most 12 letters, digits or hyphens, not starting
        with a hyphen (a spreadsheet would read the number as a formula)."""
        value = self.ORDER_NUMBER_PREFIX
        if not isinstance(value, str) or not _ORDER_PREFIX.fullmatch(value):
            raise ImproperlyConfigured(
                f"{SETTINGS_NAME}['ORDER_NUMBER_PREFIX'] is {value!r}: use up to 12 letters, "
                'digits or hyphens (such as "SHOP-").'
            )
        return value

    @property
    def layout_block(self) -> str:
        """``LAYOUT_BLOCK`` checked: a block name the bridge template can be built with."""
        block = self.LAYOUT_BLOCK
        if not isinstance(block, str) or not LAYOUT_BLOCK_RE.fullmatch(block):
            raise ImproperlyConfigured(
                f"{SETTINGS_NAME}['LAYOUT_BLOCK'] is {block!r}: use the name of a block of "
                "LAYOUT_TEMPLATE (letters, digits and underscores)."
            )
        if block == "title":
            raise ImproperlyConfigured(
                f"{SETTINGS_NAME}['LAYOUT_BLOCK'] cannot be 'title': that block gets the "
                "page's title. Name the block the page's content goes in."
            )
        return block

    @property
    def rate_limit_cache(self) -> str:
        """The cache alias the rate limits count in: django-ratelimit's own setting."""
        return str(getattr(django_settings, "RATELIMIT_USE_CACHE", "default"))

    @property
    def rate_limit_fail_open(self) -> bool:
        """Let requests through when the limits' cache fails (django-ratelimit's setting)."""
        return bool(getattr(django_settings, "RATELIMIT_FAIL_OPEN", False))

    @property
    def retention(self) -> dict[str, timedelta | None]:
        """``RETENTION`` over its defaults, each period a timedelta or None (keep forever).

        Raises ``ImproperlyConfigured`` for an unknown key or a value that is not a duration
        (the system checks report it as E026).
        """
        value = self.RETENTION
        if not isinstance(value, dict):
            raise ImproperlyConfigured(f"{SETTINGS_NAME}['RETENTION'] must be a dict.")
        unknown = sorted(set(value) - set(RETENTION_MINIMUMS))
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in {SETTINGS_NAME}['RETENTION']: {', '.join(unknown)}. "
                f"Known keys: {', '.join(sorted(RETENTION_MINIMUMS))}."
            )
        merged = {**DEFAULTS["RETENTION"], **value}
        periods: dict[str, timedelta | None] = {}
        for key, period in merged.items():
            try:
                periods[key] = None if period is None else _as_timedelta(period)
            except (TypeError, ValueError):
                raise ImproperlyConfigured(
                    f"{SETTINGS_NAME}['RETENTION']['{key}'] is {period!r}: use a timedelta, "
                    "a number of seconds, or None."
                ) from None
        return periods

    @property
    def library_sign_in_lifetime(self) -> timedelta:
        return _as_timedelta(self.LIBRARY_SIGN_IN_LIFETIME)

    @property
    def update_emails_per_minute(self) -> int:
        value = self.UPDATE_EMAILS_PER_MINUTE
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImproperlyConfigured(
                f"{SETTINGS_NAME}['UPDATE_EMAILS_PER_MINUTE'] must be a whole number, at least "
                f"1; it is {value!r}."
            )
        return value

    @property
    def unsubscribe_link_lifetime(self) -> timedelta:
        return _as_timedelta(self.UNSUBSCRIBE_LINK_LIFETIME)

    @property
    def library_session_lifetime(self) -> timedelta:
        return _as_timedelta(self.LIBRARY_SESSION_LIFETIME)

    @property
    def email_retry_delay(self) -> timedelta:
        return _as_timedelta(self.EMAIL_RETRY_DELAY)

    @property
    def email_retry_max_delay(self) -> timedelta:
        return _as_timedelta(self.EMAIL_RETRY_MAX_DELAY)

    @property
    def new_sale_emails(self) -> list[str]:
        """``NEW_SALE_EMAILS`` checked: a list of email addresses (the system checks report a
        problem as E043)."""
        value = self.NEW_SALE_EMAILS or []
        key = f"{SETTINGS_NAME}['NEW_SALE_EMAILS']"
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ImproperlyConfigured(f"{key} must be a list of email addresses.")
        bad = []
        for address in value:
            try:
                validate_email(address)
            except ValidationError:
                bad.append(address)
        if bad:
            raise ImproperlyConfigured(f"{key} has invalid addresses: {', '.join(map(repr, bad))}.")
        return list(value)

    @property
    def trusted_proxies(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """TRUSTED_PROXIES as networks (an address is a network of one); parsed once."""
        if "_trusted_proxies" not in self._cache:
            value = self.TRUSTED_PROXIES
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ImproperlyConfigured(
                    f"{SETTINGS_NAME}['TRUSTED_PROXIES'] must be a list of addresses or networks."
                )
            try:
                networks = [ipaddress.ip_network(str(v).strip(), strict=False) for v in value]
            except ValueError as exc:
                raise ImproperlyConfigured(
                    f"{SETTINGS_NAME}['TRUSTED_PROXIES']: {exc} (an IP address or network)."
                ) from exc
            self._cache["_trusted_proxies"] = networks
        return list(self._cache["_trusted_proxies"])

    def require_secret_key(self) -> str:
        if not self.STRIPE_SECRET_KEY:
            raise ImproperlyConfigured(
                f"Set {SETTINGS_NAME}['STRIPE_SECRET_KEY'] to your Stripe secret key."
            )
        return str(self.STRIPE_SECRET_KEY)


def _as_timedelta(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=float(value))


app_settings = PaidDeliverySettings()


@receiver(setting_changed)
def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTINGS_NAME, "SECRET_KEY"):
        app_settings.reload()
