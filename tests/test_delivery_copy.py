"""DeliveryCopy: the default made at migrate, one default at a time, the snippet admin, and
placeholders that fill safely."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from tests.factories import DeliveryCopyFactory, ProductPageFactory, page_editor
from wagtail_paid_delivery.models import DeliveryCopy
from wagtail_paid_delivery.models.copy import fill_placeholders

pytestmark = pytest.mark.django_db

VIEWSET = DeliveryCopy.snippet_viewset


def url(action: str, *args) -> str:
    return reverse(VIEWSET.get_url_name(action), args=args)


def copy_form_data(**overrides) -> dict:
    """Every field of the snippet form, with the built-in words."""
    data = {"name": "Friendly words", "is_default": ""}
    for field in DeliveryCopy._meta.get_fields():
        if getattr(field, "validators", None) and field.name not in data and field.has_default():
            data[field.name] = str(field.get_default())
    data.update(overrides)
    return data


def form_errors(response) -> dict:
    assert response.status_code == 200, response.status_code
    return {k: [str(e) for e in v] for k, v in response.context["form"].errors.items()}


# The default copy.


def test_default_copy_is_created_by_migrate():
    # pytest-django built this database with `migrate`; post_migrate made the default copy.
    default = DeliveryCopy.objects.get(is_default=True)
    assert default.name == "Default delivery copy"
    assert default.success_title == "Thank you for your purchase"


def test_post_migrate_does_not_add_a_second_copy_when_one_exists():
    from django.apps import apps

    from wagtail_paid_delivery.defaults import ensure_default_copy

    ensure_default_copy(app_config=apps.get_app_config("wagtail_paid_delivery"))
    assert DeliveryCopy.objects.count() == 1


def test_get_default_recreates_the_default_if_a_site_deleted_every_copy():
    DeliveryCopy.objects.all().delete()
    default = DeliveryCopy.objects.get_default()
    assert default.is_default
    assert DeliveryCopy.objects.count() == 1


def test_making_another_copy_the_default_moves_the_flag():
    first = DeliveryCopy.objects.get(is_default=True)
    second = DeliveryCopyFactory(name="Second", is_default=True)
    first.refresh_from_db()
    assert not first.is_default
    assert list(DeliveryCopy.objects.filter(is_default=True)) == [second]
    assert DeliveryCopy.objects.get_default() == second


def test_saving_a_non_default_copy_leaves_the_default_alone():
    first = DeliveryCopy.objects.get(is_default=True)
    DeliveryCopyFactory(name="Other")
    assert DeliveryCopy.objects.get_default() == first


def test_product_falls_back_to_the_default_copy(home):
    product = ProductPageFactory(parent=home)
    assert product.delivery_copy is None
    assert product.get_delivery_copy() == DeliveryCopy.objects.get(is_default=True)
    chosen = DeliveryCopyFactory(name="Chosen")
    product.delivery_copy = chosen
    assert product.get_delivery_copy() == chosen


def test_deleting_the_chosen_copy_makes_the_product_fall_back(home):
    chosen = DeliveryCopyFactory(name="Chosen")
    product = ProductPageFactory(parent=home, delivery_copy=chosen)
    chosen.delete()
    product.refresh_from_db()
    assert product.get_delivery_copy().is_default


# The snippet admin.


def test_snippet_list_shows_every_copy_and_marks_the_default(admin_client):
    DeliveryCopyFactory(name="Holiday words")
    response = admin_client.get(url("list"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Default delivery copy" in html
    assert "Holiday words" in html


def test_snippet_is_listed_in_the_admin_as_delivery_copy(admin_client):
    html = admin_client.get(reverse("wagtailsnippets:index")).content.decode()
    assert url("list") in html
    assert "Delivery copy" in html


def test_editor_creates_a_copy_in_the_admin(admin_client):
    response = admin_client.get(url("add"))
    assert response.status_code == 200
    assert "Thank you for your purchase" in response.content.decode()  # defaults prefilled

    response = admin_client.post(url("add"), copy_form_data(success_title="Thanks, {email}!"))
    assert response.status_code == 302, form_errors(response)
    copy = DeliveryCopy.objects.get(name="Friendly words")
    assert copy.success_title == "Thanks, {email}!"
    assert not copy.is_default


def test_editor_edits_a_copy_and_makes_it_the_default_in_the_admin(admin_client):
    old_default = DeliveryCopy.objects.get(is_default=True)
    copy = DeliveryCopyFactory(name="Friendly words")
    response = admin_client.get(url("edit", copy.pk))
    assert response.status_code == 200

    data = copy_form_data(is_default="on", pending_title="Nearly there")
    response = admin_client.post(url("edit", copy.pk), data)
    assert response.status_code == 302, form_errors(response)
    copy.refresh_from_db()
    old_default.refresh_from_db()
    assert copy.is_default and copy.pending_title == "Nearly there"
    assert not old_default.is_default


def test_unknown_placeholder_is_refused_with_a_readable_message(admin_client):
    data = copy_form_data(success_message="Hello {name}, enjoy {product} and {price}.")
    errors = form_errors(admin_client.post(url("add"), data))
    message = errors["success_message"][0]
    assert message.startswith("Unknown placeholder(s): {name}, {price}.")
    assert "You may use {product}, {email}, {expires} and {downloads_left}." in message
    assert not DeliveryCopy.objects.filter(name="Friendly words").exists()


def test_model_validation_refuses_unknown_placeholders_too():
    copy = DeliveryCopy(name="X", email_subject="Your {thing}")
    with pytest.raises(ValidationError) as excinfo:
        copy.full_clean()
    assert "email_subject" in excinfo.value.message_dict


def test_editor_without_snippet_permissions_cannot_reach_the_copy_admin(client, home):
    client.force_login(page_editor(home))
    response = client.get(url("list"))
    assert response.status_code in (302, 403)


# Placeholders.


def test_placeholders_are_filled():
    copy = DeliveryCopyFactory(success_message="Paid for {product}. Link sent to {email}.")
    html = copy.render("success_message", product="Field guide", email="a@example.com")
    assert html == "<p>Paid for Field guide. Link sent to a@example.com.</p>"


def test_html_in_editor_text_comes_out_escaped():
    copy = DeliveryCopyFactory(success_message="<script>alert(1)</script> {product}")
    html = copy.render("success_message", product="Guide")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Guide" in html


def test_html_in_values_comes_out_escaped():
    copy = DeliveryCopyFactory(success_message="Thanks for {product}, {email}")
    html = copy.render(
        "success_message", product="<script>alert(1)</script>", email='"><img src=x onerror=1>'
    )
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=1&gt;" in html


def test_attribute_access_and_template_syntax_in_editor_text_stay_inert(rf):
    text = "{product.__class__} {{ request }} {% debug %} {{product}} {product!r}"
    copy = DeliveryCopyFactory(success_message=text)
    product = ProductPageFactory.build(title="Guide")
    html = copy.render("success_message", product=product.title, request=rf.get("/"))
    assert "{product.__class__}" in html
    assert "{{ request }}" in html
    assert "{% debug %}" in html
    assert "{product!r}" in html
    assert "{Guide}" in html  # {{product}}: the inner placeholder, the braces kept as typed
    assert "WSGIRequest" not in html and "class" not in html.replace("{product.__class__}", "")
    assert "sys.path" not in html


def test_unknown_names_are_left_as_typed_and_request_is_not_a_placeholder(rf):
    assert fill_placeholders("{request} {settings}", {"request": rf.get("/")}) == (
        "{request} {settings}"
    )


def test_plain_text_rendering_fills_without_html_escaping():
    copy = DeliveryCopyFactory(email_subject="Your download: {product}")
    assert copy.render_text("email_subject", product="Tom & Jerry") == "Your download: Tom & Jerry"


def test_line_breaks_become_paragraphs():
    copy = DeliveryCopyFactory(success_message="One.\n\nTwo {product}.\nThree.")
    assert copy.render("success_message", product="X") == "<p>One.</p>\n\n<p>Two X.<br>Three.</p>"
