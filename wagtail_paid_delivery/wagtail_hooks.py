"""Wagtail admin registration and page serving hooks: pages for buyers only (``gate``), the
shop desk (the "Shop" menu, its permission policy and log
actions), the copy snippet, the editors' private-file view, and the guard that keeps sold products
from being deleted."""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Any

from django.db.models import Q
from django.shortcuts import redirect
from django.urls import include, path, reverse
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from wagtail import hooks
from wagtail.admin import messages
from wagtail.admin.utils import get_valid_next_url_from_request
from wagtail.admin.widgets import Button
from wagtail.permissions import register_permission_policy
from wagtail.snippets.models import register_snippet

from . import buyer_data, desk, gate, permissions, product_stats, refunds, stats
from .admin import buyers as buyers_admin
from .admin import buyers_only as buyers_only_admin
from .admin import selftest as selftest_admin
from .admin import urls as admin_urls
from .admin.account import ShopNotificationsPanel
from .admin.dashboard import ShopPanel
from .admin.emails import FailedEmailViewSet
from .admin.events import StripeEventViewSet
from .admin.purchases import ShopViewSetGroup
from .admin.viewsets import DeliveryCopyViewSet
from .models import OutboundEmail, ProductPageMixin, Purchase, StripeEvent
from .permissions import EmailPermissionPolicy, EventPermissionPolicy, PurchasePermissionPolicy

register_snippet(DeliveryCopyViewSet)
# Before the viewsets register: they look the policy up.
register_permission_policy(Purchase, PurchasePermissionPolicy(Purchase))
register_permission_policy(StripeEvent, EventPermissionPolicy(StripeEvent))
register_permission_policy(OutboundEmail, EmailPermissionPolicy(Purchase))


@hooks.register("register_admin_viewset")
def register_shop_desk():
    """The "Shop" menu: purchases (listing, export, inspect with timeline, actions)."""
    return ShopViewSetGroup()


@hooks.register("register_account_settings_panel")
def register_shop_notifications(request, user, profile):
    """ "Email me about new sales" on the account page (users who may view purchases)."""
    return ShopNotificationsPanel(request, user, profile)


@hooks.register("register_admin_viewset")
def register_event_inbox():
    """The event inbox, in the "Shop" menu (its ``menu_hook``)."""
    return StripeEventViewSet()


@hooks.register("register_admin_viewset")
def register_failed_emails():
    """Emails that failed or are retrying, in the "Shop" menu (its ``menu_hook``)."""
    return FailedEmailViewSet()


@hooks.register("construct_homepage_panels")
def add_shop_panel(request, panels):
    """The shop's last 30 days on the dashboard, for editors who may view purchases."""
    user = request.user
    if not PurchasePermissionPolicy(Purchase).user_has_permission(user, permissions.VIEW):
        return
    can_view_events = EventPermissionPolicy(StripeEvent).user_has_permission(
        user, permissions.VIEW_EVENTS
    )
    panels.append(ShopPanel(stats.dashboard(), can_view_events=can_view_events))


@hooks.register("register_paid_delivery_shop_menu_item")
def register_selftest_menu_item():
    """Shop → Delivery self-test (superusers and editors who may view purchases)."""
    return selftest_admin.menu_item()


@hooks.register("register_paid_delivery_shop_menu_item")
def register_buyer_data_menu_item():
    """Shop → Buyer data (export or erase; editors with ``manage_buyer_data_purchase``)."""
    return buyers_admin.menu_item()


@hooks.register("register_log_actions")
def register_desk_log_actions(actions):
    desk.register_log_actions(actions)
    actions.register_action(desk.REFUND)(refunds.RefundFormatter)
    buyer_data.register_log_actions(actions)


#: Purchases whose buyers have (or may get back) access: their product must not be deleted.
#: Refunded, revoked, failed, expired and pending purchases do not hold a page (their foreign
#: key is set to NULL and the snapshot of title and price stays).
PROTECTING_STATUSES = (Purchase.Status.PAID, Purchase.Status.DISPUTED)


@hooks.register("register_admin_urls")
def register_admin_urls():
    return [path("paid-delivery/", include(admin_urls, namespace="wagtail_paid_delivery_admin"))]


def sold_product_titles(pages: list[Any]) -> list[str]:
    """Titles of ``pages`` (or their descendants, which a delete takes along) buyers paid for."""
    pages = [p for p in pages if getattr(p, "path", None)]
    if not pages:
        return []
    in_subtrees = reduce(or_, (Q(product__path__startswith=p.path) for p in pages))
    titles = (
        Purchase.objects.filter(in_subtrees, status__in=PROTECTING_STATUSES)
        .values_list("product__title", flat=True)
        .distinct()
        .order_by("product__title")
    )
    return list(titles)


def _refusal(titles: list[str]) -> str:
    return ngettext(
        "%(titles)s cannot be deleted: buyers have paid for it and still download its files. "
        "Unpublish it to stop new sales; buyers keep their access.",
        "These products cannot be deleted, buyers have paid for them and still download their "
        "files: %(titles)s. Unpublish them to stop new sales; buyers keep their access.",
        len(titles),
    ) % {"titles": ", ".join(f"“{t}”" for t in titles)}


@hooks.register("before_delete_page")
def refuse_deleting_sold_products(request, page):
    titles = sold_product_titles([page])
    if not titles:
        return None
    messages.error(request, capfirst(_refusal(titles)))
    next_url = get_valid_next_url_from_request(request)
    return redirect(next_url or reverse("wagtailadmin_pages:edit", args=[page.pk]))


@hooks.register("before_bulk_action")
def refuse_bulk_deleting_sold_products(request, action_type, objects, action_class_instance):
    if action_type != "delete":
        return None
    titles = sold_product_titles([o for o in objects if hasattr(o, "get_descendants")])
    if not titles:
        return None
    messages.error(request, capfirst(_refusal(titles)))
    return redirect(
        getattr(action_class_instance, "next_url", None) or reverse("wagtailadmin_home")
    )


#: Hook point ``before_serve_paid_download`` (``serving.BEFORE_SERVE_HOOK``): called as
#: ``fn(request, link, file)`` after a hand-off's link was checked and before anything is counted
#: or read from storage. Return an ``HttpResponse`` to answer instead (recorded as a "hook" event,
#: not counted); return None to let the download go on. Example::
#:
#:     @hooks.register("before_serve_paid_download")
#:     def block_outside_office_hours(request, link, file):
#:         if closed_now():
#:             return HttpResponse("Downloads resume at 8:00.", status=503)
#:
#: After the response is built, ``signals.download_served`` is sent (``request``, ``link``,
#: ``file``).


#: Where ``before_edit_page`` keeps the product's files (id → title) for ``after_edit_page``.
FILES_BEFORE_EDIT = "paid_delivery_files_before_edit"


@hooks.register("before_edit_page")
def remember_product_files(request, page):
    specific = page.specific
    if request.method == "POST" and isinstance(specific, ProductPageMixin):
        files = {f.pk: str(f) for f in specific.files.all()}  # type: ignore[attr-defined]
        setattr(request, FILES_BEFORE_EDIT, files)


@hooks.register("after_edit_page")
def warn_about_removed_files(request, page):
    """A file paid buyers own was removed: allowed, but the editor is told what it means."""
    before = getattr(request, FILES_BEFORE_EDIT, None)
    if not before:
        return
    kept = {f.pk for f in page.files.all()}
    removed = {pk: title for pk, title in before.items() if pk not in kept}
    if removed and product_stats.owned_files(page, set(removed)):
        messages.warning(request, product_stats.removal_warning(list(removed.values())))


# Pages for buyers only -----------------------------------------------------------------------

# First of the before_serve_page hooks (Wagtail's own runs at order 0): no site hook that answers
# for a page can skip the check.
hooks.register("before_serve_page", gate.before_serve_page, order=-100)
hooks.register("on_serve_page", gate.private_responses)


@hooks.register("register_page_header_buttons")
def buyers_only_button(page, user, view_name, next_url=None):
    """ "Buyers only" in the "…" menu of a page's header, next to Wagtail's own actions."""
    if page.is_root() or not buyers_only_admin.may_set(user, page):
        return
    yield Button(
        _("Buyers only"),
        reverse(buyers_only_admin.URL_NAME, args=[page.pk]),
        icon_name="lock",
        priority=55,
    )


@hooks.register("before_edit_page")
def say_buyers_only(request, page):
    """The page editor says whether (and for whom) the page is restricted, and loudly when its
    product is gone."""
    if request.method != "GET":
        return
    said = buyers_only_admin.status_message(page)
    if said is not None:
        level, text = said
        getattr(messages, level)(request, text)


@hooks.register("register_paid_delivery_shop_menu_item")
def register_buyers_only_menu_item():
    """Shop → Buyers-only pages (every restriction this editor may change)."""
    return buyers_only_admin.index_menu_item()


@hooks.register("register_log_actions")
def register_buyers_only_log_actions(actions):
    actions.register_action(buyers_only_admin.SET, _("Buyers only: set"), _("Buyers only set"))
    actions.register_action(
        buyers_only_admin.REMOVED, _("Buyers only: removed"), _("Buyers only removed")
    )
