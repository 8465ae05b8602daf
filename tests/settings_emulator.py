"""Test settings plus the sandbox's Stripe emulator (which is never part of the package).

    pytest --ds=tests.settings_emulator tests/test_stripe_emulator.py tests/test_checkout_browser.py

The whole suite also passes under these settings; the emulator's tests skip under tests.settings.
"""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "sandbox.stripe_emulator"]  # noqa: F405
ROOT_URLCONF = "tests.urls_emulator"
