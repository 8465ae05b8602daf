"""A site with its own base Page (Wagtail 8's WAGTAIL_PAGE_MODEL) sells products with the mixin.

WAGTAIL_PAGE_MODEL is read when wagtail.models is imported, so it cannot change inside this test
process: each scenario runs in a subprocess under tests/settings_custombase.py, whose product page
is tests/custombase/models.py (``ProductPage(ProductPageMixin, BasePage)``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*args: str, env_extra: dict[str, str] | None = None, db: Path | None = None):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_custombase",
        "PYTHONPATH": str(ROOT),
        "WPD_CUSTOMBASE_DB": str(db or "/nonexistent/unused.sqlite3"),
        **(env_extra or {}),
    }
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def migrated_db():
    # /dev/shm when there is one: migrating Wagtail on SQLite is mostly fsync on a real disk.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        db = Path(tmp) / "custombase.sqlite3"
        result = run("-m", "django", "migrate", "--no-input", "-v0", db=db)
        assert result.returncode == 0, result.stdout + result.stderr
        yield db


def test_site_with_its_own_base_page_migrates_and_passes_checks(migrated_db):
    result = run("-m", "django", "check", db=migrated_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    # No model change is waiting for a migration, in our apps or in the site's.
    result = run("-m", "django", "makemigrations", "--check", "--dry-run", db=migrated_db)
    assert result.returncode == 0, result.stdout + result.stderr


SCENARIO = textwrap.dedent(
    """
    import django

    django.setup()

    import swapper
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client
    from django.urls import reverse
    from wagtail.models import Site
    from wagtail.test.utils.form_data import inline_formset, nested_form_data

    from django.contrib.auth import get_user_model

    from tests.custombase.models import ProductFile, ProductPage
    from wagtail_paid_delivery.models import Purchase
    from wagtail_paid_delivery.models.pages import product_file_models

    BasePage = swapper.load_model("wagtailcore", "Page")
    assert BasePage._meta.label == "basepage.BasePage", BasePage
    assert issubclass(ProductPage, BasePage)
    assert product_file_models() == [ProductFile]
    # Purchases point at the site's own base Page.
    assert Purchase._meta.get_field("product").related_model is BasePage

    root = BasePage.get_first_root_node()
    site = Site.objects.get(is_default_site=True)
    site.root_page = root
    site.hostname = "testserver"
    site.save()

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("admin", "a@example.com", "x"))
    add_url = reverse(
        "wagtailadmin_pages:add", args=("custombase", "productpage", root.pk)
    )
    assert client.get(add_url).status_code == 200
    data = nested_form_data({
        "title": "Custom guide",
        "slug": "custom-guide",
        "intro": "Made on a custom base page.",
        "price_amount": "1200",
        "currency": "JPY",
        "files": inline_formset([
            {"title": "The guide", "file": SimpleUploadedFile("guide.pdf", b"%PDF" * 100)},
        ]),
        "comments": inline_formset([]),
        "bundle_items": inline_formset([]),
    })
    data["action-publish"] = "Publish"
    response = client.post(add_url, data)
    assert response.status_code == 302, response.context["form"].errors

    page = ProductPage.objects.get(slug="custom-guide")
    assert page.live and page.price_amount == 1200
    assert page.get_parent().pk == root.pk
    product_file = page.files.get()
    assert product_file.size == 400 and len(product_file.sha256) == 64

    response = Client().get(page.url)
    assert response.status_code == 200, response.status_code
    html = response.content.decode()
    assert "Custom guide" in html and "\\u00a51,200" in html and "The guide" in html
    assert product_file.file.name not in html

    # The editor's file view works for this site's product files too.
    assert b"".join(client.get(product_file.file.url).streaming_content) == b"%PDF" * 100
    assert page.get_delivery_copy().is_default
    print("SCENARIO OK", page.url)
    """
)


def test_product_page_on_a_custom_base_page_is_created_in_the_admin_and_renders(migrated_db):
    result = run("-c", SCENARIO, db=migrated_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SCENARIO OK" in result.stdout


def test_bundled_product_app_with_a_swapped_page_fails_check_e009():
    result = run("-m", "django", "check", env_extra={"WPD_CUSTOMBASE_WITH_PRODUCT_APP": "1"})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "(wagtail_paid_delivery.E009) wagtail_paid_delivery.product is installed" in output
    assert "Remove 'wagtail_paid_delivery.product' from INSTALLED_APPS" in output
