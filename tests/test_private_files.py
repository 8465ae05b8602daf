"""Product files are private: stored outside the public folders, and no URL serves them to
anyone who may not edit the product."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import reverse

from tests.factories import UserFactory, home_page, page_editor
from tests.test_product_admin import PDF, add_url, product_data, two_files
from wagtail_paid_delivery.product.models import ProductFile, ProductPage

pytestmark = pytest.mark.django_db


@pytest.fixture
def product_file(admin_user, home):
    """A file uploaded through the page editor, as an editor would."""
    uploader = Client()
    uploader.force_login(admin_user)
    response = uploader.post(add_url(home), product_data(two_files()))
    assert response.status_code == 302
    return ProductFile.objects.get(title="The guide")


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_uploaded_files_land_under_private_storage_root_not_media_root(product_file):
    path = Path(product_file.file.path).resolve()
    private_root = Path(settings.PRIVATE_STORAGE_ROOT).resolve()
    assert private_root in path.parents
    assert Path(settings.MEDIA_ROOT).resolve() not in path.parents
    assert Path(settings.STATIC_ROOT).resolve() not in path.parents
    assert path.read_bytes() == PDF
    # Nothing was written to the public folders at all.
    media = Path(settings.MEDIA_ROOT)
    assert not media.exists() or not any(p.is_file() for p in media.rglob("*"))


def test_storage_url_is_our_admin_view_not_a_public_or_private_storage_url(product_file):
    url = product_file.file.url
    assert url == reverse("wagtail_paid_delivery_admin:product_file", args=[product_file.file.name])
    assert url.startswith("/admin/paid-delivery/files/")
    assert not url.startswith(settings.MEDIA_URL)


@override_settings(ROOT_URLCONF="tests.urls_private_storage")
def test_media_and_static_urls_do_not_serve_product_files(client, admin_client, product_file):
    name = product_file.file.name
    for c in (client, admin_client):
        for prefix in (settings.MEDIA_URL, settings.STATIC_URL):
            response = c.get(prefix + name)
            assert response.status_code == 404, prefix
            assert PDF not in body(response)


@override_settings(ROOT_URLCONF="tests.urls_private_storage")
def test_private_storage_urls_refuse_anonymous_users_and_non_superusers(client, product_file):
    # A site that mounts private_storage.urls (the README says not to) still does not hand product
    # files to buyers or strangers: the package's default PRIVATE_STORAGE_AUTH_FUNCTION is
    # allow_superuser, so only superusers get through.
    url = "/private-media/" + product_file.file.name
    response = client.get(url)
    assert response.status_code == 403
    assert PDF not in body(response)

    client.force_login(UserFactory(username="buyer"))
    assert client.get(url).status_code == 403

    client.force_login(page_editor(home_page(), username="pageeditor"))
    response = client.get(url)
    assert response.status_code == 403
    assert PDF not in body(response)


@override_settings(ROOT_URLCONF="tests.urls_private_storage")
def test_private_storage_urls_do_serve_superusers_which_is_why_we_do_not_mount_them(
    admin_client, product_file
):
    # What we found: private_storage's view serves any file under PRIVATE_STORAGE_ROOT to a
    # superuser, without asking our permission rules. Superusers may edit every page (and so
    # download every file through our admin view) anyway, so nothing leaks, but its rule is not
    # ours: a site that changes PRIVATE_STORAGE_AUTH_FUNCTION (to allow_staff, say) would widen
    # it. Hence docs/architecture.md: do not mount private_storage.urls for product files.
    response = admin_client.get("/private-media/" + product_file.file.name)
    assert response.status_code == 200
    assert body(response) == PDF


def test_admin_file_view_redirects_anonymous_users_to_login_without_bytes(client, product_file):
    response = client.get(product_file.file.url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("wagtailadmin_login"))
    assert PDF not in body(response)


def test_admin_file_view_is_404_for_an_editor_who_may_not_edit_the_page(client, product_file):
    # The editor has rights on another part of the tree only.
    from tests.testapp.models import HomePage

    elsewhere = home_page().add_child(instance=HomePage(title="Blog", slug="blog"))
    client.force_login(page_editor(elsewhere, username="blogger"))
    response = client.get(product_file.file.url)
    assert response.status_code == 404
    assert PDF not in body(response)


def test_admin_file_view_is_404_for_an_unknown_name(admin_client, product_file):
    url = reverse("wagtail_paid_delivery_admin:product_file", args=["products/nope/x.pdf"])
    assert admin_client.get(url).status_code == 404
    # Not a path-traversal door to other files in the storage either.
    url = reverse("wagtail_paid_delivery_admin:product_file", args=["../../etc/passwd"])
    assert admin_client.get(url).status_code == 404


def test_editor_who_may_edit_the_page_downloads_the_file_as_an_attachment(client, product_file):
    client.force_login(page_editor(home_page(), username="shopeditor"))
    response = client.get(product_file.file.url)
    assert response.status_code == 200
    assert body(response) == PDF
    assert response["Content-Disposition"].startswith("attachment;")
    assert 'filename="field-guide.pdf"' in response["Content-Disposition"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]


def test_superuser_downloads_the_file_from_the_admin_view(admin_client, product_file):
    response = admin_client.get(product_file.file.url)
    assert response.status_code == 200
    assert body(response) == PDF


def test_no_product_page_html_contains_the_storage_name(client, product_file):
    page = ProductPage.objects.get()
    names = [f.file.name for f in page.files.all()]
    # Anonymous, and signed in without edit rights.
    responses = [client.get(page.url)]
    client.force_login(UserFactory(username="visitor"))
    responses.append(client.get(page.url))
    for response in responses:
        assert response.status_code == 200
        html = response.content.decode()
        for name in names:
            assert name not in html
            assert name.split("/")[1] not in html  # the random folder
        assert "/admin/paid-delivery/files/" not in html
