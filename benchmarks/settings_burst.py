"""Settings of the processes benchmarks/burst.py starts (and of its own driving process).

The fault tests' process settings (tests.settings_faults: the shop, the Stripe emulator, a file
mail directory, django-q2 asynchronous; told by the environment where everything is), with the
worker count, the emulator's delay per API call and the broker chosen by the benchmark, and
logging turned down as a busy site would.
"""

import os

from tests.settings_faults import *  # noqa: F403

DEBUG = False
STRIPE_EMULATOR_DELAY_MS = int(os.environ.get("STRIPE_EMULATOR_DELAY_MS", "0"))

Q_CLUSTER = {
    **Q_CLUSTER,  # noqa: F405
    "workers": int(os.environ.get("WPD_BURST_WORKERS", "2")),
    # A task waits for Stripe at most twice the delay plus our own work: a minute is plenty.
    "timeout": 60,
    "retry": 90,
    # Successful results are not kept (README, "Deployment"): a kept one is a row written and
    # the last 250 re-read under a lock, at every task.
    "save_limit": -1,
    # The pusher hands each worker a few tasks ahead, not workers² (the default).
    "queue_limit": int(os.environ.get("WPD_BURST_WORKERS", "2")) * 4,
}

WAGTAIL_PAID_DELIVERY = {
    **WAGTAIL_PAID_DELIVERY,  # noqa: F405
    # The driver checks out every purchase of the burst from one address.
    "CHECKOUT_RATE_LIMIT": None,
}

LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}

# As docs/deployment.md recommends: each process keeps its connection (gunicorn's threads, the
# cluster's workers, pusher and monitor), instead of one new PostgreSQL backend per request and
# per task.
DATABASES = {
    "default": {
        **DATABASES["default"],  # noqa: F405
        "CONN_MAX_AGE": int(os.environ.get("WPD_BURST_CMA", "60")),
        "CONN_HEALTH_CHECKS": True,
    }
}
