"""Settings of the multi-server test's processes (tests/test_multiserver.py).

The reference deployment of docs/deployment.md, on loopback: the fault tests' process settings
(tests.settings_faults: the test's PostgreSQL database, its private files and mail directory,
the Stripe emulator as Stripe, retry delays in seconds) with what more than one server needs:

- django-q2 on the **Redis** broker (``WPD_Q_REDIS``, read by tests.settings), one queue
  (``WPD_Q_NAME``) that every app server enqueues on and every cluster takes from;
- the rate limits counted in that Redis (a cache every app server shares), under the run's name;
- persistent database connections, checked before reuse;
- the buyer's address from nginx's ``X-Forwarded-For`` (``ClientAddressMiddleware``, nginx on
  127.0.0.1 trusted), so the rate limits count per buyer;
- product files sent by nginx (``SERVE_BACKEND`` "nginx", X-Accel-Redirect to the internal
  location of tests/multiserver_nginx.conf);
- the Stripe emulator answering each call after ``STRIPE_EMULATOR_DELAY_MS`` (Stripe's own API
  takes a while too), so a burst keeps both clusters' queues full.
"""

import os

from tests.settings_faults import *  # noqa: F403

_ENV = os.environ

STRIPE_EMULATOR_DELAY_MS = int(_ENV.get("STRIPE_EMULATOR_DELAY_MS", "0"))

DATABASES = {
    "default": {**DATABASES["default"], "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True},  # noqa: F405
}

# Shared by every app server: the rate limits (W004) and Django's default cache.
_SHARED_CACHE = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache",
    "LOCATION": _ENV["WPD_Q_REDIS"],
    "KEY_PREFIX": _ENV["WPD_Q_NAME"],
}
CACHES = {"default": _SHARED_CACHE, "rate_limits": _SHARED_CACHE}

MIDDLEWARE = ["wagtail_paid_delivery.middleware.ClientAddressMiddleware", *MIDDLEWARE]  # noqa: F405

WAGTAIL_PAID_DELIVERY = {
    **WAGTAIL_PAID_DELIVERY,  # noqa: F405
    "TRUSTED_PROXIES": ["127.0.0.1"],
    "SERVE_BACKEND": "nginx",
    "NGINX_INTERNAL_PREFIX": "/_paid_files/",
}
