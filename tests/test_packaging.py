"""The built wheel carries everything a site needs (templates, static, both apps' migrations) and
nothing it should not (tests, sandbox), and a site runs `migrate` and `check` from it alone.

No downloads: the wheel is built without build isolation from the tools already installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ROOT / "pyproject.toml").exists(), reason="needs the source checkout (not under tox)"
    ),
]

# What a checkout holds that is not the source: never copied into the build folder.
NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", ".tox", "*cache*", "__pycache__", "*.egg-info", "build", "dist", "var",
    "node_modules", "results",
)  # fmt: skip

SETTINGS = """
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET_KEY = "packaging-test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "wagtail_paid_delivery",
    "wagtail_paid_delivery.product",
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
]
ROOT_URLCONF = "pkgtest_urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": r"%(db)s"}}
USE_TZ = True
STATIC_URL = "/static/"
STATIC_ROOT = str(HERE / "static")
MEDIA_URL = "/media/"
MEDIA_ROOT = str(HERE / "media")
PRIVATE_STORAGE_ROOT = str(HERE / "private")
WAGTAIL_SITE_NAME = "Packaged"
WAGTAILADMIN_BASE_URL = "http://localhost"
Q_CLUSTER = {"name": "pkg", "orm": "default", "timeout": 60, "retry": 90}
WAGTAIL_PAID_DELIVERY = {
    "STRIPE_SECRET_KEY": "sk_test_packaging",
    "STRIPE_WEBHOOK_SECRETS": ["whsec_packaging"],
}
"""

URLS = """
from django.urls import include, path
from wagtail import urls as wagtail_urls
from wagtail.admin import urls as wagtailadmin_urls

urlpatterns = [
    path("admin/", include(wagtailadmin_urls)),
    path("shop/", include("wagtail_paid_delivery.urls")),
    path("", include(wagtail_urls)),
]
"""


def call(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=600, check=False, **kwargs
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy, so the checkout gets no build/ or .egg-info/ and other work in it is
    # not disturbed; tests/ and sandbox/ are copied too, to prove the wheel leaves them out.
    src = tmp_path_factory.mktemp("src") / "wagtail-paid-delivery"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    call(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)]
    )
    (built,) = out.glob("wagtail_paid_delivery-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site-packages")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    call([*pip, "--target", str(target), str(wheel)])
    return target


def test_wheel_holds_templates_static_and_both_apps_migrations(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "wagtail_paid_delivery/templates/wagtail_paid_delivery/base.html",
        "wagtail_paid_delivery/templates/wagtail_paid_delivery/product_page.html",
        "wagtail_paid_delivery/static/wagtail_paid_delivery/paid-delivery.css",
        "wagtail_paid_delivery/migrations/__init__.py",
        "wagtail_paid_delivery/migrations/0001_initial.py",
        "wagtail_paid_delivery/product/migrations/__init__.py",
        "wagtail_paid_delivery/product/migrations/0001_initial.py",
        # The translations, compiled (Django reads only the .mo), and the template for new ones.
        "wagtail_paid_delivery/locale/django.pot",
        "wagtail_paid_delivery/locale/de/LC_MESSAGES/django.po",
        "wagtail_paid_delivery/locale/de/LC_MESSAGES/django.mo",
    }
    assert expected <= names, sorted(expected - names)
    # Every migration, template and catalogue in the checkout made it in, not only those above.
    for folder in ("migrations", "product/migrations", "templates", "static", "locale"):
        for path in (ROOT / "wagtail_paid_delivery" / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in names
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)


def test_wheel_leaves_out_tests_sandbox_and_other_top_level_folders(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"wagtail_paid_delivery"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_wheel_migrates_and_passes_checks_without_the_checkout(installed, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shm = Path("/dev/shm")
    db_dir = Path(shm if shm.is_dir() else tmp_path)
    db = db_dir / f"wpd-packaging-{os.getpid()}.sqlite3"
    (site / "pkgtest_settings.py").write_text(SETTINGS % {"db": db})
    (site / "pkgtest_urls.py").write_text(URLS)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(installed), str(site)]),
        DJANGO_SETTINGS_MODULE="pkgtest_settings",
    )
    # cwd outside the checkout, so `import wagtail_paid_delivery` cannot find the repo copy.
    run = {"cwd": site, "env": env}
    try:
        where = call(
            [sys.executable, "-c", "import wagtail_paid_delivery as m; print(m.__file__)"], **run
        ).stdout.strip()
        assert Path(where).is_relative_to(installed), where
        assert not Path(where).is_relative_to(ROOT)

        call([sys.executable, "-m", "django", "migrate", "--no-input", "-v0"], **run)
        checked = call([sys.executable, "-m", "django", "check"], **run)
        assert "no issues" in checked.stdout
        script = textwrap.dedent(
            """
            import django
            django.setup()
            from django.template.loader import get_template
            from wagtail_paid_delivery.models import DeliveryCopy
            from wagtail_paid_delivery.product.models import ProductPage
            import wagtail_paid_delivery
            origin = get_template("wagtail_paid_delivery/product_page.html").origin.name
            assert origin.startswith(wagtail_paid_delivery.__path__[0]), origin
            assert DeliveryCopy.objects.filter(is_default=True).count() == 1
            assert ProductPage.objects.count() == 0
            print("PACKAGED OK")
            """
        )
        assert "PACKAGED OK" in call([sys.executable, "-c", script], **run).stdout
        unapplied = call([sys.executable, "-m", "django", "showmigrations", "--plan"], **run)
        assert "[ ]" not in unapplied.stdout
        assert "wagtail_paid_delivery_product.0001_initial" in unapplied.stdout
    finally:
        db.unlink(missing_ok=True)
