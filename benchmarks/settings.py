"""Settings for benchmarks/webhook.py: the test settings, a chosen database, an async ORM broker.

Read by gunicorn workers and by ``migrate``; the database comes from ``WPD_BENCH_DATABASE_URL``.
"""

import os

import dj_database_url

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.urls"
DEBUG = False
# MIDDLEWARE stays the test settings' (sessions, auth, CSRF...): the same for all three
# variants, and what a site puts in front of the real view.

DATABASES = {
    "default": dj_database_url.parse(os.environ["WPD_BENCH_DATABASE_URL"], conn_max_age=600)
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Concurrent writers: WAL, write lock taken at BEGIN (no upgrade deadlocks), a busy wait.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

# Asynchronous, ORM broker: the real view's enqueue is an insert into django_q_ormq, and no
# cluster runs, so the queue only grows.
Q_CLUSTER = {
    "name": "bench",
    "orm": "default",
    "sync": False,
    "timeout": 30,
    "retry": 60,
    # django-q2 logs every enqueue at INFO to stderr by default; a busy site turns that down.
    "log_level": "WARNING",
}

WAGTAIL_PAID_DELIVERY = {
    "STRIPE_SECRET_KEY": "sk_test_bench",
    "STRIPE_WEBHOOK_SECRETS": ["whsec_bench"],
    "INSTALLATION_ID": "bench",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "ERROR"},
}
