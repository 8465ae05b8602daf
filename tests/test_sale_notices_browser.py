"""A staff member opts in to new sale notices on their Wagtail account page, in a real browser.
Takes docs/screenshots/account-sale-notices.png (WPD_SCREENSHOTS=1)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from tests.factories import UserFactory
from tests.test_download_browser import in_thread
from tests.test_shop_desk_browser import full_screenshot
from wagtail_paid_delivery.models import ShopNotificationPreference

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def clerk_session(live_server, settings):
    """A shop clerk whose group may view purchases (and use the admin), signed in."""
    group = Group.objects.create(name="Shop clerks")
    for app, codename in (
        ("wagtailadmin", "access_admin"),
        ("wagtail_paid_delivery", "view_purchase"),
    ):
        group.permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    clerk = UserFactory(username="clara", first_name="Clara", last_name="Clerk", is_staff=False)
    clerk.groups.add(group)
    client = Client()
    client.force_login(clerk)
    return clerk, client.cookies[settings.SESSION_COOKIE_NAME].value


def test_browser_account_page_opt_in_to_new_sale_emails(
    clerk_session, live_server, headless_chromium, settings
):
    clerk, session = clerk_session
    context = headless_chromium.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}]
    )
    page = context.new_page()
    assert page.goto(live_server.url + "/admin/account/").status == 200
    page.get_by_role("tab", name="Notifications").click()
    box = page.get_by_label("Email me about new sales")
    assert box.is_visible() and not box.is_checked()
    box.check()
    page.get_by_role("button", name="Save").click()
    page.get_by_text("Your account settings have been changed successfully!").wait_for()
    assert (
        in_thread(lambda: ShopNotificationPreference.objects.get(user=clerk).email_new_sales)
        is True
    )

    page.get_by_role("tab", name="Notifications").click()
    assert page.get_by_label("Email me about new sales").is_checked()
    full_screenshot(page, "account-sale-notices.png")
    context.close()
