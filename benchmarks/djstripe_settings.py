"""A minimal Django site around dj-stripe's own webhook view, for benchmarks/webhook.py.

Runs only in dj-stripe's own virtualenv (``benchmarks/.venv-djstripe``, made by the benchmark);
dj-stripe is no dependency of the project. "Record only": ``DJSTRIPE_WEBHOOK_EVENT_CALLBACK``
(dj-stripe's hook for deferring the work) takes the verified event and does nothing, so the
view verifies the signature and stores its ``WebhookEventTrigger`` row without syncing objects
from Stripe (dj-stripe 2.11 deprecates that setting for its signals, which cannot skip the
processing, and still honours it; migrate prints its warning). The middleware is the shop's.
"""

import os

import dj_database_url

SECRET_KEY = "benchmark-only"  # noqa: S105
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "benchmarks.djstripe_urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "djstripe",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
DATABASES = {
    "default": dj_database_url.parse(os.environ["WPD_BENCH_DATABASE_URL"], conn_max_age=600)
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The same SQLite options as the shop's run (benchmarks/settings.py).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

STRIPE_LIVE_MODE = False
STRIPE_TEST_SECRET_KEY = "sk_test_bench"  # noqa: S105
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_WEBHOOK_EVENT_CALLBACK = "benchmarks.djstripe_urls.record_only"

LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}
