import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


@pytest.fixture(autouse=True)
def _no_rate_limit_counted_yet():
    """Every test starts with nothing counted: the limits are per client, and every test
    client is 127.0.0.1."""
    from django.core.cache import caches

    from wagtail_paid_delivery.conf import app_settings

    caches[app_settings.rate_limit_cache].clear()


@pytest.fixture(autouse=True)
def _sale_notice_staff_read_afresh():
    """A test's rollback sends no signals: the staff one test opted in must not be told about
    the next test's sales from this process's cache."""
    from wagtail_paid_delivery import sale_notices

    sale_notices.forget_staff()


@pytest.fixture
def home(db):
    from tests.factories import home_page

    return home_page()


@pytest.fixture
def admin_user(db):
    from tests.factories import SuperuserFactory

    return SuperuserFactory(username="admin")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def fake_stripe(monkeypatch):
    """An in-memory Stripe behind stripe-python (only HTTP is replaced): tests/stripe_fake.py."""
    from tests.stripe_fake import FakeStripe
    from wagtail_paid_delivery import stripe_api

    fake = FakeStripe()
    monkeypatch.setattr(stripe_api, "_http_client_override", fake)
    stripe_api.reset_clients()
    yield fake
    stripe_api.reset_clients()


# System dependencies (nginx, Chromium; axe-core below): a test that needs one calls
# require_executable(). It skips with the reason when the program is missing, except under
# WPD_REQUIRE_SYSTEM_DEPS=1 (CI), where a missing program fails the test instead of silently
# skipping it.

REQUIRE_SYSTEM_DEPS = os.environ.get("WPD_REQUIRE_SYSTEM_DEPS") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_executable(name: str, *paths: str, install_hint: str = "") -> str:
    """The path of a system program a test needs: found on PATH (as ``name``) or at ``paths``.

    Missing: skip with a stated reason, or fail when WPD_REQUIRE_SYSTEM_DEPS=1.
    """
    for candidate in (*paths, name):
        found = shutil.which(candidate)
        if found:
            return found
    hint = install_hint or f"apt-get install -y {name}"
    missing_dependency(f"{name} is not installed (looked for {', '.join((*paths, name))}); {hint}")


def missing_dependency(reason: str) -> NoReturn:
    """Skip with ``reason`` (what is missing and how to install it), or fail when
    WPD_REQUIRE_SYSTEM_DEPS=1."""
    if REQUIRE_SYSTEM_DEPS:
        pytest.fail(f"{reason}. WPD_REQUIRE_SYSTEM_DEPS=1 requires it.", pytrace=False)
    pytest.skip(reason)


#: axe-core, the accessibility checker the browser tests inject: `npm ci --prefix tests` installs
#: it from tests/package-lock.json; WPD_AXE_CORE names another copy of axe.min.js.
AXE_CORE = Path(
    os.environ.get("WPD_AXE_CORE")
    or Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
)


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's script. Missing: skip with the reason, or fail when WPD_REQUIRE_SYSTEM_DEPS=1."""
    if AXE_CORE.is_file():
        return AXE_CORE.read_text(encoding="utf-8")
    reason = f"axe-core is not installed (looked for {AXE_CORE}); run: npm ci --prefix tests"
    if REQUIRE_SYSTEM_DEPS:
        pytest.fail(f"{reason}. WPD_REQUIRE_SYSTEM_DEPS=1 requires it.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return require_executable("chromium", "/usr/bin/chromium")


@pytest.fixture
def headless_chromium(chromium_path):
    """A headless Chromium (a Playwright Browser), closed after the test.

    Function-scoped on purpose: while Playwright's sync API is running it keeps an event loop
    current in this thread, and Django then refuses ORM calls (SynchronousOnlyOperation) in
    the tests that follow.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def purchase(home):
    """A pending purchase of a $12.50 product (what a checkout leaves before payment)."""
    from tests.factories import ProductPageFactory, PurchaseFactory

    return PurchaseFactory(product=ProductPageFactory(parent=home, price_amount=1250))
