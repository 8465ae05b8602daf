"""System checks that turn configuration mistakes into clear messages at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import swapper
from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from . import licenses, stripe_api
from .conf import CHECKOUT_OPTION_TYPES, RETENTION_MINIMUMS, SETTINGS_NAME, app_settings

# Check ids are never reused or renumbered: sites silence checks by id
# (SILENCED_SYSTEM_CHECKS), so an id means one problem for good. A new problem gets a new id, the
# next free number in its range (E000-E019 installation and settings, E020-E029 delivery
# settings, E030-E039 and W030-W039 Stripe key shapes, E040-E049 emails, E050-E059 license
# keys, E080-E084 object storage, E101- deploy-only
# errors, W001- warnings); a retired check leaves its id unused.
# The README's "System checks" table lists every id.
ID = "wagtail_paid_delivery"


# Installation: the apps this one needs, and the bundled product app vs a custom base Page.

_REQUIRED_APPS = (
    ("private_storage", "product files are stored with django-private-storage", f"{ID}.E003"),
    ("django_q", "webhooks are processed by django-q2 tasks", f"{ID}.E004"),
)


@register(Tags.compatibility)
def check_installed_apps(**kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"'{app}' is not in INSTALLED_APPS.",
            hint=f"Add '{app}' to INSTALLED_APPS: {why}.",
            id=check_id,
        )
        for app, why, check_id in _REQUIRED_APPS
        if not apps.is_installed(app)
    ]


@register(Tags.models)
def check_product_app_with_custom_base_page(**kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("wagtail_paid_delivery.product") and swapper.is_swapped(
        "wagtailcore", "Page"
    ):
        return [
            Error(
                "wagtail_paid_delivery.product is installed, but this site has its own base Page "
                "(WAGTAIL_PAGE_MODEL).",
                hint="Remove 'wagtail_paid_delivery.product' from INSTALLED_APPS and define your "
                "product page from ProductPageMixin and your base Page (see the README).",
                id=f"{ID}.E009",
            )
        ]
    return []


# Storage: paid files live under PRIVATE_STORAGE_ROOT, which must not be publicly served.


def _inside(path: Path, parent: Any) -> bool:
    if not parent:
        return False
    parent_path = Path(parent).resolve()
    return path == parent_path or parent_path in path.parents


@register(Tags.security)
def check_private_storage_root(**kwargs: Any) -> list[CheckMessage]:
    root = getattr(settings, "PRIVATE_STORAGE_ROOT", None)
    if not root:
        return [
            Error(
                "PRIVATE_STORAGE_ROOT is not set.",
                hint="Set PRIVATE_STORAGE_ROOT to a folder outside MEDIA_ROOT and STATIC_ROOT "
                "that the web server does not serve; paid files are stored there.",
                id=f"{ID}.E001",
            )
        ]
    path = Path(root).resolve()
    for name in ("MEDIA_ROOT", "STATIC_ROOT"):
        if _inside(path, getattr(settings, name, None)):
            return [
                Error(
                    f"PRIVATE_STORAGE_ROOT ({root}) is inside {name}.",
                    hint=f"Files under {name} are publicly served. Move PRIVATE_STORAGE_ROOT "
                    "to a folder of its own.",
                    id=f"{ID}.E002",
                )
            ]
    return []


# Task queue: django-q2's Q_CLUSTER timeout, retry and ack_failures.


@register(Tags.compatibility)
def check_q_cluster(**kwargs: Any) -> list[CheckMessage]:
    conf = getattr(settings, "Q_CLUSTER", None) or {}
    timeout = conf.get("timeout")
    if not timeout:
        return [
            Error(
                "Q_CLUSTER has no 'timeout'.",
                hint="Set Q_CLUSTER['timeout'] (seconds a task may run, e.g. 60) and "
                "Q_CLUSTER['retry'] larger than it.",
                id=f"{ID}.E005",
            )
        ]
    retry = conf.get("retry", 60)  # django-q2's default
    if retry <= timeout:
        return [
            Error(
                f"Q_CLUSTER['retry'] ({retry}) is not greater than Q_CLUSTER['timeout'] "
                f"({timeout}).",
                hint="The broker would hand a still-running task to a second worker. "
                "Set 'retry' larger than 'timeout', e.g. timeout 60 and retry 90.",
                id=f"{ID}.E006",
            )
        ]
    return []


@register(Tags.compatibility, deploy=True)
def check_q_ack_failures(**kwargs: Any) -> list[CheckMessage]:
    # Deploy only: a development site may run django-q2 as it likes.
    conf = getattr(settings, "Q_CLUSTER", None) or {}
    if conf.get("ack_failures"):
        return []
    return [
        Warning(
            "Q_CLUSTER['ack_failures'] is not True.",
            hint="Retrying failed Stripe events and emails is this app's job (backoff, "
            "sweeps every minute, MAX_EVENT_ATTEMPTS, MAX_EMAIL_ATTEMPTS). Without ack_failures "
            "the ORM broker also hands a failed task back every 'retry' seconds, forever. Set "
            "Q_CLUSTER['ack_failures'] = True.",
            id=f"{ID}.W003",
        )
    ]


# Stripe credentials: warnings while developing, errors under `check --deploy`.


def _stripe_credentials_missing() -> list[str]:
    missing = []
    if not app_settings.STRIPE_SECRET_KEY:
        missing.append("STRIPE_SECRET_KEY")
    if not app_settings.webhook_secrets:
        missing.append("STRIPE_WEBHOOK_SECRETS")
    return missing


def _safe_missing() -> list[str]:
    try:
        return _stripe_credentials_missing()
    except Exception:  # reported by check_settings
        return []


@register(Tags.compatibility)
def check_stripe_credentials(**kwargs: Any) -> list[CheckMessage]:
    # Only a warning here, so a site runs locally without Stripe; `check --deploy` makes it an
    # error.
    return [
        Warning(
            f"{SETTINGS_NAME}['{key}'] is not set: checkout and fulfillment are off.",
            hint="Fine while developing. Set it before taking payments.",
            id=f"{ID}.W001" if key == "STRIPE_SECRET_KEY" else f"{ID}.W002",
        )
        for key in _safe_missing()
    ]


@register(Tags.security, deploy=True)
def check_stripe_credentials_deploy(**kwargs: Any) -> list[CheckMessage]:
    return [
        Error(
            f"{SETTINGS_NAME}['{key}'] is not set.",
            hint="A production site cannot take or confirm payments without it. "
            "Find it in the Stripe Dashboard (Developers: API keys and Webhooks).",
            id=f"{ID}.E101" if key == "STRIPE_SECRET_KEY" else f"{ID}.E102",
        )
        for key in _safe_missing()
    ]


# Stripe key shapes: a key pasted into the wrong setting, or from the wrong mode, is caught at
# start-up rather than by the first buyer. Messages never quote a key or a secret.

_KEYS_PAGE = "the Stripe Dashboard, Developers: API keys"


def _safe_credentials() -> tuple[Any, list[Any]] | None:
    try:
        return app_settings.STRIPE_SECRET_KEY, app_settings.webhook_secrets
    except Exception:  # reported by check_settings
        return None


@register(Tags.security)
def check_stripe_key_shapes(**kwargs: Any) -> list[CheckMessage]:
    credentials = _safe_credentials()
    if credentials is None:
        return []
    key, webhook_secrets = credentials
    messages = _check_secret_key(key) if key else []
    for position, secret in enumerate(webhook_secrets, start=1):
        messages += _check_webhook_secret(position, secret)
    return messages


def _check_secret_key(key: Any) -> list[CheckMessage]:
    mode = stripe_api.key_mode(key)
    name = f"{SETTINGS_NAME}['STRIPE_SECRET_KEY']"
    if mode == "publishable":
        return [
            Error(
                f"{name} is a publishable key (pk_...).",
                hint=f"Use the secret key (sk_test_... or sk_live_...) or a restricted key "
                f"(rk_...) from {_KEYS_PAGE}. The publishable key is for browsers; this app "
                "does not need it.",
                id=f"{ID}.E030",
            )
        ]
    if not mode or not stripe_api.SECRET_KEY.fullmatch(key):
        swapped = isinstance(key, str) and key.startswith("whsec_")
        return [
            Error(
                f"{name} is neither a test nor a live secret key"
                + (" (it looks like a webhook signing secret)." if swapped else "."),
                hint="A Stripe secret key starts with sk_test_, sk_live_, rk_test_ or rk_live_ "
                f"and has no spaces or line breaks. Copy it again from {_KEYS_PAGE}.",
                id=f"{ID}.E031",
            )
        ]
    if mode == "live" and settings.DEBUG:
        return [
            Error(
                f"{name} is a live key and DEBUG is on.",
                hint="With DEBUG on, any error shows buyers a page full of this site's "
                "internals while it takes real money. Turn DEBUG off, or use a test key "
                "(sk_test_...) while developing.",
                id=f"{ID}.E033",
            )
        ]
    return []


def _check_webhook_secret(position: int, secret: Any) -> list[CheckMessage]:
    if isinstance(secret, str) and re.fullmatch(r"whsec_\S+", secret):
        return []
    swapped = isinstance(secret, str) and secret.startswith(("sk_", "rk_", "pk_"))
    return [
        Error(
            f"{SETTINGS_NAME}['STRIPE_WEBHOOK_SECRETS'] entry {position} is not a webhook "
            "signing secret (whsec_...)" + (" (it looks like an API key)." if swapped else "."),
            hint="Copy the endpoint's signing secret from the Stripe Dashboard (Developers: "
            "Webhooks, your endpoint, Signing secret), or from `stripe listen`. It starts "
            "with whsec_ and has no spaces or line breaks.",
            id=f"{ID}.E032",
        )
    ]


@register(Tags.security, deploy=True)
def check_stripe_test_key_deploy(**kwargs: Any) -> list[CheckMessage]:
    credentials = _safe_credentials()
    if credentials is None or stripe_api.key_mode(credentials[0]) != "test":
        return []
    return [
        Warning(
            f"{SETTINGS_NAME}['STRIPE_SECRET_KEY'] is a test-mode key: this site takes no real "
            "payments.",
            hint="Set the live key (sk_live_... or rk_live_...) before opening the shop. On a "
            "staging site that stays in test mode, add this warning's id to "
            "SILENCED_SYSTEM_CHECKS.",
            id=f"{ID}.W030",
        )
    ]


# Money settings: refund and dispute policies, event attempts and retry delays, CHECKOUT_OPTIONS.

#: Each policy setting: its allowed values and its own check id.
_POLICIES = {
    "PARTIAL_REFUND_POLICY": (("keep", "revoke"), f"{ID}.E011"),
    "DISPUTE_POLICY": (("suspend", "ignore"), f"{ID}.E013"),
}


@register(Tags.compatibility)
def check_money_settings(**kwargs: Any) -> list[CheckMessage]:
    try:
        policies = {key: getattr(app_settings, key) for key in _POLICIES}
        attempts = app_settings.MAX_EVENT_ATTEMPTS
        options = app_settings.CHECKOUT_OPTIONS
        delays = (app_settings.event_retry_delay, app_settings.event_retry_max_delay)
    except (TypeError, ValueError):
        # Only converting the retry delays raises these (an unknown key raises
        # ImproperlyConfigured); the other money checks need the delays, so they wait.
        return [
            Error(
                f"{SETTINGS_NAME}['EVENT_RETRY_DELAY'] or ['EVENT_RETRY_MAX_DELAY'] is not "
                "a duration.",
                hint="Use a timedelta or a number of seconds.",
                id=f"{ID}.E012",
            )
        ]
    except Exception:  # unknown keys: reported by check_settings
        return []
    return [
        *_check_policies(policies),
        *_check_max_event_attempts(attempts),
        *_check_retry_delays(*delays),
        *_check_checkout_options(options),
    ]


def _check_policies(values: dict[str, Any]) -> list[CheckMessage]:
    return [
        Error(
            f"{SETTINGS_NAME}['{key}'] is {values[key]!r}.",
            hint=f"Use one of: {', '.join(repr(a) for a in allowed)}.",
            id=check_id,
        )
        for key, (allowed, check_id) in _POLICIES.items()
        if values[key] not in allowed
    ]


def _check_max_event_attempts(attempts: Any) -> list[CheckMessage]:
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        return [
            Error(
                f"{SETTINGS_NAME}['MAX_EVENT_ATTEMPTS'] is {attempts!r}.",
                hint="Use a whole number of attempts, at least 1 (the default is 8).",
                id=f"{ID}.E014",
            )
        ]
    return []


def _check_retry_delays(delay: timedelta, max_delay: timedelta) -> list[CheckMessage]:
    if delay.total_seconds() <= 0 or max_delay < delay:
        return [
            Error(
                f"{SETTINGS_NAME}['EVENT_RETRY_DELAY'] must be positive and not longer than "
                "EVENT_RETRY_MAX_DELAY.",
                hint="For example timedelta(minutes=1) and timedelta(hours=6).",
                id=f"{ID}.E015",
            )
        ]
    return []


def _check_checkout_options(options: Any) -> list[CheckMessage]:
    if not isinstance(options, dict):
        problems = ["it must be a dict"]
    else:
        problems = _checkout_option_type_problems(options) + _checkout_terms_problems(options)
    if not problems:
        return []
    return [
        Error(
            f"{SETTINGS_NAME}['CHECKOUT_OPTIONS']: {'; '.join(problems)}.",
            hint="Known options: "
            + ", ".join(sorted(CHECKOUT_OPTION_TYPES))
            + ". See the README's Checkout options.",
            id=f"{ID}.E010",
        )
    ]


def _checkout_option_type_problems(options: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in options.items():
        types = CHECKOUT_OPTION_TYPES.get(key)
        if types is None:
            problems.append(f"unknown option {key!r}")
        elif not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{key!r} must be {names}, not {value!r}")
    return problems


def _checkout_terms_problems(options: dict[str, Any]) -> list[str]:
    problems = []
    message = options.get("terms_message") or ""
    if message and not options.get("require_terms"):
        problems.append("'terms_message' needs 'require_terms': True")
    if isinstance(message, str) and len(message) > 1200:
        problems.append("'terms_message' is longer than Stripe's 1200 characters")
    return problems


# Emails: how often and how far apart the outbox tries a promised email.


@register(Tags.compatibility)
def check_email_settings(**kwargs: Any) -> list[CheckMessage]:
    try:
        attempts = app_settings.MAX_EMAIL_ATTEMPTS
        delay, longest = app_settings.email_retry_delay, app_settings.email_retry_max_delay
    except (TypeError, ValueError):
        return [
            Error(
                f"{SETTINGS_NAME}['EMAIL_RETRY_DELAY'] or ['EMAIL_RETRY_MAX_DELAY'] is not "
                "a duration.",
                hint="Use a timedelta or a number of seconds.",
                id=f"{ID}.E040",
            )
        ]
    except Exception:  # unknown keys: reported by check_settings
        return []
    messages: list[CheckMessage] = []
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['MAX_EMAIL_ATTEMPTS'] is {attempts!r}.",
                hint="Use a whole number of attempts, at least 1 (the default is 50).",
                id=f"{ID}.E041",
            )
        )
    if delay.total_seconds() <= 0 or longest < delay:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['EMAIL_RETRY_DELAY'] must be positive and not longer than "
                "EMAIL_RETRY_MAX_DELAY.",
                hint="For example timedelta(minutes=1) and timedelta(minutes=15).",
                id=f"{ID}.E042",
            )
        )
    return messages


@register(Tags.compatibility)
def check_new_sale_emails(**kwargs: Any) -> list[CheckMessage]:
    """NEW_SALE_EMAILS: a list of valid addresses."""
    try:
        app_settings.user_settings  # noqa: B018 (raises for unknown keys, not a dict)
    except Exception:  # reported by check_settings
        return []
    try:
        app_settings.new_sale_emails  # noqa: B018 (validates)
    except ImproperlyConfigured as error:
        return [
            Error(
                str(error),
                hint="For example ['shop@example.com']; an empty list sends no new sale "
                "notices (staff may still opt in on their account page).",
                id=f"{ID}.E043",
            )
        ]
    return []


# Delivery settings: SERVE_BACKEND and its options, the rate limits and their cache, RETENTION.


@register(Tags.compatibility)
def check_delivery_settings(**kwargs: Any) -> list[CheckMessage]:
    """SERVE_BACKEND and its options, the rate limits (issue 7's settings)."""
    from .serving.backends import BACKENDS

    try:
        backend = app_settings.SERVE_BACKEND
        prefix = app_settings.NGINX_INTERNAL_PREFIX
        lifetime = app_settings.PRESIGNED_URL_LIFETIME
        limits = {k: getattr(app_settings, k) for k in RATE_LIMIT_KEYS}
    except Exception:  # reported by check_settings
        return []
    messages: list[CheckMessage] = check_delivery_page_csp()
    if backend not in BACKENDS:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['SERVE_BACKEND'] is {backend!r}.",
                hint=f"Use one of: {', '.join(repr(b) for b in BACKENDS)}.",
                id=f"{ID}.E020",
            )
        )
    if backend == "nginx" and not (
        isinstance(prefix, str)
        and prefix.startswith("/")
        and prefix.endswith("/")
        and len(prefix) > 2
    ):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['NGINX_INTERNAL_PREFIX'] is {prefix!r}.",
                hint="Use the path of your nginx `internal` location, starting and ending with "
                "'/', e.g. '/_paid_files/'.",
                id=f"{ID}.E021",
            )
        )
    if backend in ("s3", "presigned") and (
        not isinstance(lifetime, int) or isinstance(lifetime, bool) or not 1 <= lifetime <= 600
    ):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['PRESIGNED_URL_LIFETIME'] is {lifetime!r}.",
                hint="Use a few seconds (1 to 600): the URL only has to live until the browser "
                "follows the redirect.",
                id=f"{ID}.E022",
            )
        )
    for key, value in limits.items():
        if value is None:
            continue
        ok = (
            isinstance(value, (tuple, list))
            and len(value) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
        )
        if not ok:
            messages.append(
                Error(
                    f"{SETTINGS_NAME}['{key}'] is {value!r}.",
                    hint="Use (requests, seconds), e.g. (10, 3600), or None for no limit.",
                    id=f"{ID}.E023",
                )
            )
    return messages


def check_delivery_page_csp() -> list[CheckMessage]:
    """DELIVERY_PAGE_CSP: only style, font and image sources, each a valid source expression."""
    try:
        app_settings.delivery_page_csp  # noqa: B018 (validates)
    except ImproperlyConfigured as error:
        return [
            Error(
                str(error),
                hint="For example {'style-src': [\"'self'\", 'https://fonts.googleapis.com'], "
                "'font-src': [\"'self'\", 'https://fonts.gstatic.com']}. Scripts are allowed "
                "only with the page's nonce (README, 'Pages that show a token').",
                id=f"{ID}.E027",
            )
        ]
    return []


# Object storage (E080-E084): a product storage that would make a paid file public.


@register(Tags.security)
def check_product_storage(**kwargs: Any) -> list[CheckMessage]:
    """The product storage never writes public objects (E081), and with the presigned backend
    its url() signs a short-lived URL (E080)."""
    from .serving.backends import presign_problem
    from .storage import get_product_storage, public_acl

    try:
        backend = app_settings.SERVE_BACKEND
        storage = get_product_storage()
    except Exception:  # a bad settings dict is E000; a bad STORAGE fails loudly where used
        return []
    messages: list[CheckMessage] = []
    problem = presign_problem(storage) if backend in ("s3", "presigned") else None
    if problem:
        messages.append(
            Error(
                f"SERVE_BACKEND {backend!r} cannot use the product storage: {problem}.",
                hint="Give the product storage querystring_auth=True and no custom_domain "
                "(or a CloudFront signer): buyers must get a signed URL that expires in "
                "PRESIGNED_URL_LIFETIME seconds, never the object's permanent address.",
                id=f"{ID}.E080",
            )
        )
    acl = public_acl(storage)
    if acl:
        messages.append(
            Error(
                f"The product storage writes every file with the public ACL {acl!r}.",
                hint="Remove default_acl (AWS_DEFAULT_ACL) and any 'ACL' in object_parameters, "
                "or set them to 'private': a paid file must not be readable at its plain URL.",
                id=f"{ID}.E081",
            )
        )
    return messages


@register(Tags.compatibility)
def check_order_number_prefix(**kwargs: Any) -> list[CheckMessage]:
    """ORDER_NUMBER_PREFIX: what every new order number begins with (``order_numbers``)."""
    try:
        app_settings.user_settings  # noqa: B018 (raises for unknown keys, not a dict)
    except Exception:  # reported by check_settings
        return []
    try:
        app_settings.order_number_prefix  # noqa: B018 (validates)
    except ImproperlyConfigured as error:
        return [Error(str(error), hint='For example "SHOP-", or "".', id=f"{ID}.E018")]
    return []


#: Every rate limit setting: (requests, seconds) or None (E023).
RATE_LIMIT_KEYS = (
    "CHECKOUT_RATE_LIMIT",
    "RESEND_RATE_LIMIT",
    "RESEND_EMAIL_RATE_LIMIT",
    "LIBRARY_RATE_LIMIT",
    "LIBRARY_EMAIL_RATE_LIMIT",
)

#: The library's lifetimes: each a positive duration (E028).
LIBRARY_LIFETIME_KEYS = ("LIBRARY_SIGN_IN_LIFETIME", "LIBRARY_SESSION_LIFETIME")


@register(Tags.compatibility)
def check_library_lifetimes(**kwargs: Any) -> list[CheckMessage]:
    """A sign-in link or library session that lasts no time (or forever) is a mistake."""
    messages: list[CheckMessage] = []
    for key in LIBRARY_LIFETIME_KEYS:
        try:
            value = getattr(app_settings, key)
            ok = not isinstance(value, bool) and (
                value.total_seconds() > 0
                if isinstance(value, timedelta)
                else isinstance(value, (int, float)) and value > 0
            )
        except Exception:  # reported by check_settings
            return []
        if not ok:
            messages.append(
                Error(
                    f"{SETTINGS_NAME}['{key}'] is {value!r}.",
                    hint="Use a positive timedelta or number of seconds, e.g. "
                    "timedelta(minutes=20).",
                    id=f"{ID}.E028",
                )
            )
    return messages


#: Cache backends that count for one process only, or not at all: (check id, what it means).
_UNSHARED_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache": (
        f"{ID}.W004",
        "counts per process: with N processes (gunicorn workers, servers) every limit is "
        "N times higher, and a restart forgets it",
    ),
    "django.core.cache.backends.dummy.DummyCache": (
        f"{ID}.W005",
        "counts nothing: no rate limit applies at all",
    ),
}


@register(Tags.caches)
def check_rate_limit_cache(**kwargs: Any) -> list[CheckMessage]:
    """The cache the limits count in exists, and RESEND_CACHE (old) does not contradict it."""
    try:
        alias = app_settings.rate_limit_cache
        old_alias = app_settings.RESEND_CACHE
    except Exception:  # reported by check_settings
        return []
    messages: list[CheckMessage] = []
    if old_alias is not None and old_alias != alias:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['RESEND_CACHE'] is {old_alias!r}, but the rate limits count "
                f"in RATELIMIT_USE_CACHE ({alias!r}).",
                hint=f"RESEND_CACHE is no longer read. Set RATELIMIT_USE_CACHE = {old_alias!r} "
                f"(a Django setting) and remove RESEND_CACHE from {SETTINGS_NAME}.",
                id=f"{ID}.E024",
            )
        )
    if alias not in settings.CACHES:
        messages.append(
            Error(
                f"The rate limits' cache {alias!r} (RATELIMIT_USE_CACHE) is not in CACHES.",
                hint="Name a cache from CACHES in RATELIMIT_USE_CACHE, or add that cache.",
                id=f"{ID}.E025",
            )
        )
    return messages


@register(Tags.caches, deploy=True)
def check_rate_limit_cache_shared(**kwargs: Any) -> list[CheckMessage]:
    # Deploy only: while developing, one runserver process counts right in a LocMemCache.
    try:
        alias = app_settings.rate_limit_cache
        limited = any(getattr(app_settings, key) for key in RATE_LIMIT_KEYS)
    except Exception:  # reported by check_settings
        return []
    backend = (settings.CACHES.get(alias) or {}).get("BACKEND", "")
    if not limited or backend not in _UNSHARED_CACHES:
        return []
    check_id, meaning = _UNSHARED_CACHES[backend]
    return [
        Warning(
            f"The rate limits (checkout, resend, library) count in the cache {alias!r}, a "
            f"{backend.rsplit('.', 1)[-1]}, which {meaning}.",
            hint="Point RATELIMIT_USE_CACHE at a cache every app process shares: Redis or "
            "Memcached (best: atomic counts), or the database cache.",
            id=check_id,
        )
    ]


MIDDLEWARE_PATH = "wagtail_paid_delivery.middleware.ClientAddressMiddleware"


@register(Tags.security)
def check_trusted_proxies(**kwargs: Any) -> list[CheckMessage]:
    """TRUSTED_PROXIES parses, and is read by the middleware (alone it changes nothing)."""
    try:
        proxies = app_settings.trusted_proxies
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint='For example ["127.0.0.1", "10.0.0.0/24"]: the addresses your reverse '
                "proxies connect to the app servers from.",
                id=f"{ID}.E085",
            )
        ]
    except Exception:  # reported by check_settings
        return []
    if proxies and MIDDLEWARE_PATH not in settings.MIDDLEWARE:
        return [
            Error(
                f"{SETTINGS_NAME}['TRUSTED_PROXIES'] is set, but {MIDDLEWARE_PATH} is not in "
                "MIDDLEWARE, so REMOTE_ADDR stays the proxy's address.",
                hint=f"Add '{MIDDLEWARE_PATH}' at the top of MIDDLEWARE.",
                id=f"{ID}.E086",
            )
        ]
    return []


_RETENTION_HINT = (
    "Each RETENTION period is a timedelta (or seconds), or None to keep forever; "
    "'stripe_events' at least 30 days (Stripe may send an event again that long), the others "
    'at least a day. See the README\'s "Data we store".'
)


@register(Tags.compatibility)
def check_retention(**kwargs: Any) -> list[CheckMessage]:
    try:
        app_settings.user_settings  # noqa: B018 (raises for unknown keys, not a dict)
    except Exception:  # reported by check_settings
        return []
    problem = _retention_problem()
    if not problem:
        return []
    return [Error(problem, hint=_RETENTION_HINT, id=f"{ID}.E026")]


def _retention_problem() -> str:
    try:
        periods = app_settings.retention
    except ImproperlyConfigured as exc:
        return str(exc)
    short = [
        f"'{key}' is {period} (at least {RETENTION_MINIMUMS[key]})"
        for key, period in periods.items()
        if period is not None and period < RETENTION_MINIMUMS[key]
    ]
    return f"{SETTINGS_NAME}['RETENTION']: {'; '.join(short)}." if short else ""


# General settings: the settings dict itself (E000), WEBHOOK_TOLERANCE, DOWNLOAD_LIMIT.


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    try:
        tolerance = app_settings.WEBHOOK_TOLERANCE
        limit = app_settings.DOWNLOAD_LIMIT
    except Exception as exc:  # unknown keys, not a dict
        return [Error(str(exc), id=f"{ID}.E000")]
    if not tolerance or tolerance <= 0:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['WEBHOOK_TOLERANCE'] is {tolerance!r}.",
                hint="A tolerance of 0 turns off the replay check on webhook signatures. "
                "Use 300 seconds (Stripe's default).",
                id=f"{ID}.E007",
            )
        )
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['DOWNLOAD_LIMIT'] is {limit!r}.",
                hint="Use a whole number of downloads per file (at least 1), or None for "
                "unlimited.",
                id=f"{ID}.E008",
            )
        )
    return messages


# The buyer pages' layout: LAYOUT_TEMPLATE and LAYOUT_BLOCK (E016, E017).


@register(Tags.templates)
def check_layout(**kwargs: Any) -> list[CheckMessage]:
    """The layout template loads, and has the block the pages' content goes in."""
    try:
        name = app_settings.LAYOUT_TEMPLATE
    except Exception:  # reported by check_settings
        return []
    try:
        found = _template_blocks(name)
    except Exception as error:  # any loading or syntax error: its message says what
        return [
            Error(
                f"{SETTINGS_NAME}['LAYOUT_TEMPLATE'] {name!r} cannot be loaded: {error}",
                hint="Name a template your TEMPLATES settings find, e.g. 'base.html'.",
                id=f"{ID}.E016",
            )
        ]
    problem = _layout_block_problem(name, found)
    if problem is None:
        return []
    return [Error(problem, hint=_LAYOUT_HINT, id=f"{ID}.E017")]


def _layout_block_problem(name: str, found: set[str] | None) -> str | None:
    """What is wrong with LAYOUT_BLOCK for the layout ``name`` with blocks ``found``."""
    try:
        block = app_settings.layout_block
    except ImproperlyConfigured as error:
        return str(error)
    if found is not None and block not in found:
        return (
            f"{SETTINGS_NAME}['LAYOUT_TEMPLATE'] {name!r} has no block {block!r}. "
            f"Its blocks: {', '.join(sorted(found)) or 'none'}."
        )
    return None


_LAYOUT_HINT = (
    "Set LAYOUT_BLOCK to the block of LAYOUT_TEMPLATE the page content goes in, e.g. 'content'."
)


def _template_blocks(name: str) -> set[str] | None:
    """The block names of template ``name`` and of the templates it extends.

    None when a template extends a name held in a variable: its blocks cannot be known here.
    """
    from django.template import loader
    from django.template.base import Template
    from django.template.loader_tags import BlockNode, ExtendsNode

    names: set[str] = set()
    template: Template = loader.get_template(name).template  # type: ignore[attr-defined]
    for _depth in range(20):  # a cycle would fail to render anyway; stop looking
        nodes = template.nodelist
        names |= {getattr(node, "name", "") for node in nodes.get_nodes_by_type(BlockNode)}
        extends = nodes.get_nodes_by_type(ExtendsNode)
        if not extends:
            return names
        parent = getattr(extends[0], "parent_name", None)
        literal = getattr(parent, "var", None)
        if getattr(parent, "filters", None) or not isinstance(literal, str):
            return None
        template = template.engine.get_template(literal)
    return names


# License keys: the signing key and the retired public keys parse (E050, E051).


@register(Tags.security)
def check_license_keys(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    try:
        value = app_settings.LICENSE_SIGNING_KEY
        retired = app_settings.LICENSE_RETIRED_PUBLIC_KEYS or []
    except Exception:  # reported by check_settings (E000)
        return []
    if value:
        try:
            licenses.load_private_key(str(value))
        except licenses.SigningKeyError as error:
            errors.append(
                Error(
                    f"{SETTINGS_NAME}['LICENSE_SIGNING_KEY'] is not an Ed25519 private key: "
                    f"{error}",
                    hint="Make one with: python manage.py license_signing_key",
                    id=f"{ID}.E050",
                )
            )
    for position, text in enumerate(retired):
        if not licenses.is_public_key(text):
            errors.append(
                Error(
                    f"{SETTINGS_NAME}['LICENSE_RETIRED_PUBLIC_KEYS'][{position}] is not the base64 "
                    "of an Ed25519 public key.",
                    hint="Copy the public key the admin showed for the old signing key.",
                    id=f"{ID}.E051",
                )
            )
    return errors


# Update emails: the rate, the unsubscribe link's lifetime, the publishing schedule (E065-E067).


@register(Tags.compatibility)
def check_update_emails(**kwargs: Any) -> list[CheckMessage]:
    try:
        app_settings.user_settings  # noqa: B018 (raises for unknown keys, not a dict)
    except Exception:  # reported by check_settings
        return []
    messages: list[CheckMessage] = []
    try:
        app_settings.update_emails_per_minute  # noqa: B018 (validates)
    except ImproperlyConfigured as error:
        messages.append(
            Error(
                str(error),
                hint="For example 60 (the default): one batch of 60 update emails a minute.",
                id=f"{ID}.E065",
            )
        )
    try:
        lifetime = app_settings.unsubscribe_link_lifetime
    except (TypeError, ValueError):
        lifetime = None
    if lifetime is None or lifetime < timedelta(days=1):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['UNSUBSCRIBE_LINK_LIFETIME'] must be a duration of at least "
                "a day.",
                hint="Use a timedelta or seconds, for example timedelta(days=365).",
                id=f"{ID}.E066",
            )
        )
    if not isinstance(app_settings.SCHEDULE_PUBLISHING, bool):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['SCHEDULE_PUBLISHING'] must be True or False.",
                hint="True schedules Wagtail's publish_scheduled every minute through django-q2.",
                id=f"{ID}.E067",
            )
        )
    return messages
