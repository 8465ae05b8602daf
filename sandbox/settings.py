"""Settings for the sandbox: a runnable Wagtail shop that uses wagtail-paid-delivery.

The only place in the project that reads the environment; it maps these variables into the
``WAGTAIL_PAID_DELIVERY`` dict the package reads through its ``conf.py``:

=========================  ==============================================================
``DATABASE_URL``           a database URL (``postgres://…``); default SQLite in sandbox/var/
``STRIPE_SECRET_KEY``      a Stripe test key; unset: placeholder credentials and the emulator
``STRIPE_WEBHOOK_SECRET``  webhook signing secret(s), comma-separated for several
``STRIPE_API_BASE``        a Stripe stand-in (stripe-mock, the sandbox emulator)
``SANDBOX_PORT``           the port runserver listens on (default 8000)
``SANDBOX_VERBOSE``        ``1``: every routine log line too (stripe-python, django-q2, sweeps)
=========================  ==============================================================

Not for production: a fixed SECRET_KEY, DEBUG on, e-mail written to files.
"""

from __future__ import annotations

import base64
import importlib.util
import os
from pathlib import Path

import dj_database_url

SANDBOX_DIR = Path(__file__).resolve().parent
VAR_DIR = SANDBOX_DIR / "var"
# SQLite needs the folder to exist before the first connection; the rest is made on first use.
VAR_DIR.mkdir(exist_ok=True)

SANDBOX_PORT = int(os.environ.get("SANDBOX_PORT") or 8000)
SANDBOX_URL = f"http://127.0.0.1:{SANDBOX_PORT}"
# Quiet by default: the console shows the shop's purchase lines, requests and problems.
SANDBOX_VERBOSE = os.environ.get("SANDBOX_VERBOSE", "") not in ("", "0")

SECRET_KEY = "sandbox-only-not-secret-do-not-deploy"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

# The Stripe emulator (sandbox/stripe_emulator/) is optional: installed only when it exists.
STRIPE_EMULATOR_INSTALLED = importlib.util.find_spec("sandbox.stripe_emulator") is not None

INSTALLED_APPS = [
    "sandbox.home",
    *(["sandbox.stripe_emulator"] if STRIPE_EMULATOR_INSTALLED else []),
    "wagtail_paid_delivery",
    "wagtail_paid_delivery.product",
    "wagtail.contrib.redirects",
    "wagtail.contrib.settings",
    "wagtail.embeds",
    "wagtail.sites",
    "wagtail.users",
    "wagtail.snippets",
    "wagtail.documents",
    "wagtail.images",
    "wagtail.search",
    "wagtail.admin",
    "wagtail",
    "modelcluster",
    "taggit",
    # For its storage class only: its URLconf is deliberately NOT mounted (see urls.py).
    "private_storage",
    "django_q",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The buyer's language from their browser (Accept-Language): pages, the purchase's stored
    # language, Stripe Checkout's locale (README, "Languages").
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "wagtail.contrib.redirects.middleware.RedirectMiddleware",
]

ROOT_URLCONF = "sandbox.urls"
WSGI_APPLICATION = "sandbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The site's own templates (sandbox/base.html), before the apps' templates.
        "DIRS": [SANDBOX_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Database: SQLite in sandbox/var/ unless DATABASE_URL says otherwise.
DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}", conn_max_age=0)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # runserver's threads and the qcluster's processes write at the same time (webhooks, task
    # results, sessions). WAL lets readers run beside a writer; IMMEDIATE transactions take the
    # write lock when they begin, so two writers queue on the busy timeout instead of one failing
    # with "database is locked" when it upgrades a read lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []  # sandbox: "admin" / "admin" is fine

LANGUAGE_CODE = "en-us"
# The languages the shop speaks; LocaleMiddleware picks one from the browser (Accept-Language),
# e.g. Chromium with --lang=de, or curl -H "Accept-Language: de" (README, "Languages").
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [SANDBOX_DIR / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = VAR_DIR / "media"
# Paid files: outside MEDIA_ROOT and STATIC_ROOT, and no URL serves this folder.
PRIVATE_STORAGE_ROOT = VAR_DIR / "private"

# Every e-mail (delivery links, resends) is written to a file here instead of being sent.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = "Sandbox Shop <shop@sandbox.invalid>"

WAGTAIL_SITE_NAME = "Sandbox Shop"
WAGTAILADMIN_BASE_URL = SANDBOX_URL
WAGTAILSEARCH_BACKENDS = {"default": {"BACKEND": "wagtail.search.backends.database"}}
WAGTAILDOCS_EXTENSIONS = ["csv", "docx", "key", "odt", "pdf", "pptx", "rtf", "txt", "xlsx", "zip"]

# django-q2 with the ORM broker: `manage.py qcluster` runs beside runserver (see sandbox/run.py).
Q_CLUSTER = {
    "name": "sandbox",
    "orm": "default",
    "workers": 2,
    "timeout": 60,
    "retry": 90,
    "poll": 0.5,
    "catch_up": False,
    "label": "Tasks",
    # Retries are the app's (backoff + sweep); the broker must not hand failed tasks back too.
    "ack_failures": True,
}

# Stripe. With no key in the environment the sandbox uses fixed placeholder test credentials and
# the sandbox's own Stripe emulator (served by this site under /stripe-emulator/), so it runs
# offline. With STRIPE_SECRET_KEY set, it talks to Stripe (test mode) or to STRIPE_API_BASE.
SANDBOX_STRIPE_SECRET_KEY = "sk_test_sandbox_placeholder"
SANDBOX_STRIPE_WEBHOOK_SECRET = "whsec_sandbox_placeholder"
STRIPE_EMULATOR_URL = f"{SANDBOX_URL}/stripe-emulator"
# Milliseconds the emulator waits before answering each API call (Stripe takes a few hundred).
STRIPE_EMULATOR_DELAY_MS = int(os.environ.get("STRIPE_EMULATOR_DELAY_MS", "0"))

STRIPE_PLACEHOLDER_CREDENTIALS = not os.environ.get("STRIPE_SECRET_KEY")
if STRIPE_PLACEHOLDER_CREDENTIALS:
    _stripe_secret_key = SANDBOX_STRIPE_SECRET_KEY
    _stripe_webhook_secrets = [SANDBOX_STRIPE_WEBHOOK_SECRET]
    # An explicit STRIPE_API_BASE (stripe-mock, say) still wins over the emulator.
    _stripe_api_base: str | None = os.environ.get("STRIPE_API_BASE") or STRIPE_EMULATOR_URL
else:
    _stripe_secret_key = os.environ["STRIPE_SECRET_KEY"]
    _stripe_webhook_secrets = [
        s.strip() for s in os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()
    ]
    _stripe_api_base = os.environ.get("STRIPE_API_BASE") or None


def _sandbox_license_signing_key() -> str:
    path = VAR_DIR / "license_signing_key"
    if not path.exists():
        # What `manage.py license_signing_key` prints (the app's models cannot load here yet).
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        path.write_text(base64.b64encode(raw).decode())
        path.chmod(0o600)
    return path.read_text().strip()


WAGTAIL_PAID_DELIVERY = {
    "STRIPE_SECRET_KEY": _stripe_secret_key,
    "STRIPE_WEBHOOK_SECRETS": _stripe_webhook_secrets,
    "STRIPE_API_BASE": _stripe_api_base,
    "INSTALLATION_ID": "sandbox",
    # Every sale is also told to the shop: see the notice in sandbox/var/mail/.
    "NEW_SALE_EMAILS": ["owner@sandbox.invalid"],
    # The shop's buyer pages render inside the sandbox site's own base template.
    "LAYOUT_TEMPLATE": "sandbox/base.html",
    "LAYOUT_BLOCK": "main",
    # License keys: a signing key made on first start and kept in sandbox/var/ (never deploy it).
    "LICENSE_SIGNING_KEY": _sandbox_license_signing_key(),
    # Scheduled publishing (and the update emails a scheduled revision asks for) without cron:
    # a django-q2 schedule runs Wagtail's publish_scheduled every minute.
    "SCHEDULE_PUBLISHING": True,
}
if _stripe_api_base == STRIPE_EMULATOR_URL:
    # The emulator takes the promotion code SANDBOX20 and adds 10 % tax, so a sandbox receipt
    # shows both. Against Stripe these need setting up in its Dashboard (Stripe Tax): off.
    WAGTAIL_PAID_DELIVERY["CHECKOUT_OPTIONS"] = {
        "allow_promotion_codes": True,
        "automatic_tax": True,
    }

# Django's default logging, with download tokens and hand-off signatures redacted from every
# handler: runserver's access log (django.server) and django.request's "Not Found: /shop/d/…"
# would otherwise print working download links.
# Error reports (mail_admins, the 500 page's report) with delivery URLs redacted in every frame's
# variables, like the log filter below does for log records.
DEFAULT_EXCEPTION_REPORTER_FILTER = (
    "wagtail_paid_delivery.log_filters.RedactingExceptionReporterFilter"
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
        "require_debug_true": {"()": "django.utils.log.RequireDebugTrue"},
        "redact_tokens": {"()": "wagtail_paid_delivery.log_filters.RedactTokensFilter"},
        "hide_emulator_api": {"()": "sandbox.home.logs.HideEmulatorApiRequests"},
    },
    "formatters": {
        "django.server": {
            "()": "django.utils.log.ServerFormatter",
            "format": "[{server_time}] {message}",
            "style": "{",
        }
    },
    "handlers": {
        "console": {
            "level": "INFO",
            "filters": ["require_debug_true", "redact_tokens"],
            "class": "logging.StreamHandler",
        },
        "django.server": {
            "level": "INFO",
            "class": "logging.StreamHandler",
            "formatter": "django.server",
            "filters": ["redact_tokens", *([] if SANDBOX_VERBOSE else ["hide_emulator_api"])],
        },
        "shop": {
            "level": "INFO",
            "class": "sandbox.home.logs.ShopHandler",
            "filters": ["redact_tokens"],
        },
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false", "redact_tokens"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    # The package's own loggers (wagtail_paid_delivery.*) and the rest reach the root's console.
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django": {"handlers": ["console", "mail_admins"], "level": "INFO", "propagate": False},
        "django.server": {"handlers": ["django.server"], "level": "INFO", "propagate": False},
        # The purchase lines, prefixed "[shop]" (sandbox/home/logs.py): the sandbox's own, the
        # package's "Purchase … paid / refunded" and "Email … sent".
        **{
            name: {"handlers": ["shop"], "level": "INFO", "propagate": False}
            for name in (
                "sandbox.shop",
                "wagtail_paid_delivery.fulfillment",
                "wagtail_paid_delivery.outbox",
            )
        },
        # Routine: each Stripe request, each emulator webhook, django-q2's every task picked up
        # and processed (the every-minute sweep and its heartbeat), Wagtail's page log and tasks.
        **{
            name: {"level": "INFO" if SANDBOX_VERBOSE else "WARNING"}
            for name in (
                "stripe",
                "django-q",
                "wagtail_paid_delivery",
                "sandbox.stripe_emulator",
                "wagtail",
                "django_tasks",
            )
        },
    },
}
