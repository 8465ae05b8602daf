"""Settings of the processes the fault tests start (tests/processes.py, tests/test_faults.py).

The test settings with the sandbox's Stripe emulator, told by the environment the test sets
where its database, files, mail and Stripe are (all loopback), with django-q2 asynchronous and
retry delays shortened to seconds. The test's own process keeps ``tests.settings_emulator``.
"""

import os

from tests.settings_emulator import *  # noqa: F403

_ENV = os.environ

# The test's private files and a mail directory every process writes to and the test reads.
PRIVATE_STORAGE_ROOT = _ENV["WPD_FAULT_PRIVATE_ROOT"]
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = _ENV["WPD_FAULT_MAIL_DIR"]
# Where the emulator sends its webhooks (the shop may run in another server than "Stripe").
STRIPE_EMULATOR_WEBHOOK_URL = _ENV["WPD_FAULT_WEBHOOK_URL"]

WAGTAIL_PAID_DELIVERY = {
    **WAGTAIL_PAID_DELIVERY,  # noqa: F405
    "STRIPE_API_BASE": _ENV["WPD_FAULT_STRIPE_API_BASE"],
    "EVENT_RETRY_DELAY": 1,
    "EVENT_RETRY_MAX_DELAY": 2,
    "EMAIL_RETRY_DELAY": 1,
    "EMAIL_RETRY_MAX_DELAY": 2,
    "SCHEDULES": False,
}

# One queue for every process of a run (its name also keys the tasks' signatures); tasks are
# short, so a worker's timeout (and the leases derived from it) is seconds.
Q_CLUSTER = {
    **Q_CLUSTER,  # noqa: F405
    "name": _ENV["WPD_Q_NAME"],
    "sync": False,
    "workers": 2,
    "timeout": 5,
    "retry": 7,
    "poll": 0.1,
    "guard_cycle": 0.2,
    # The ticker in tests/processes.py stands in for the scheduler (whose minute is too long).
    "scheduler": False,
}
