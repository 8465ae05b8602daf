"""Test settings: SQLite by default, PostgreSQL with DATABASE_URL."""

import os
import tempfile
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent
_TMP = Path(tempfile.mkdtemp(prefix="wpd-tests-"))

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "wagtail_paid_delivery",
    "wagtail_paid_delivery.product",
    "tests.testapp",
    "wagtail.contrib.settings",
    "wagtail.embeds",
    "wagtail.users",
    "wagtail.snippets",
    "wagtail.documents",
    "wagtail.images",
    "wagtail.search",
    "wagtail.admin",
    "wagtail",
    "modelcluster",
    "taggit",
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
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{_TMP / 'db.sqlite3'}", conn_max_age=0)
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["TEST"] = {"NAME": str(_TMP / "test.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en"
USE_I18N = True

STATIC_URL = "/static/"
STATIC_ROOT = str(_TMP / "static")
MEDIA_URL = "/media/"
MEDIA_ROOT = str(_TMP / "media")
PRIVATE_STORAGE_ROOT = str(_TMP / "private")

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# The rate limits (checkout, resend) count in a cache every process shares, as a deployed site's
# must (W004): a file cache of this test run's own, emptied before each test (conftest.py).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "rate_limits": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(_TMP / "rate-limits"),
    },
}
RATELIMIT_USE_CACHE = "rate_limits"

WAGTAIL_SITE_NAME = "Test shop"
WAGTAILADMIN_BASE_URL = "http://testserver"
WAGTAILSEARCH_BACKENDS = {"default": {"BACKEND": "wagtail.search.backends.database"}}

# django-q2 reads Q_CLUSTER at import: sync mode has to be chosen here, not in override_settings.
Q_CLUSTER = {
    "name": "tests",
    "orm": "default",
    "sync": os.environ.get("WPD_Q_SYNC", "1") == "1",
    "timeout": 30,
    "retry": 60,
    "workers": 1,
    "catch_up": False,
    # Retries are the app's (backoff + sweep); the broker must not hand failed tasks back too.
    "ack_failures": True,
}
# The real-cluster tests also run with django-q2's Redis broker (which never re-delivers a task,
# so retries must be the app's): WPD_Q_REDIS is its redis:// URL. The queue is named for this
# process, so runs sharing a Redis server do not take each other's tasks.
if os.environ.get("WPD_Q_REDIS"):
    del Q_CLUSTER["orm"]
    Q_CLUSTER["redis"] = os.environ["WPD_Q_REDIS"]
    Q_CLUSTER["name"] = f"tests-{os.getpid()}"

WAGTAIL_PAID_DELIVERY = {
    "STRIPE_SECRET_KEY": "sk_test_tests",
    "STRIPE_WEBHOOK_SECRETS": ["whsec_tests"],
    "INSTALLATION_ID": "tests",
}
