"""Test settings for a site whose base Page is its own (WAGTAIL_PAGE_MODEL).

Used in subprocesses by tests/test_custom_base_page.py. The bundled product app is left out (it
subclasses wagtailcore.Page, which this site has swapped out: check E009 says so), and so is
tests.testapp (its HomePage subclasses wagtailcore.Page too).
WPD_CUSTOMBASE_WITH_PRODUCT_APP=1 puts the product app back, to show check E009.
WPD_CUSTOMBASE_DB names the SQLite file to use.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import _TMP, INSTALLED_APPS

INSTALLED_APPS = [
    "wagtail.test.basepage",
    "tests.custombase",
    *(a for a in INSTALLED_APPS if a not in {"wagtail_paid_delivery.product", "tests.testapp"}),
]
if os.environ.get("WPD_CUSTOMBASE_WITH_PRODUCT_APP") == "1":
    INSTALLED_APPS.append("wagtail_paid_delivery.product")

WAGTAIL_PAGE_MODEL = "basepage.BasePage"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("WPD_CUSTOMBASE_DB", str(_TMP / "custombase.sqlite3")),
    }
}
