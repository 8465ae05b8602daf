"""What the shop desk's viewsets (purchases, Stripe events, emails) share.

Their objects are made and moved by the app's own code (checkout, the webhook inbox, the email
outbox), never added, edited or deleted as rows: each viewset shows a listing and an inspect
view, and its actions are the desk's own views. This mixin says so to Wagtail in one place.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.functional import cached_property
from django.views.generic import FormView
from wagtail.admin.admin_url_finder import ModelAdminURLFinder
from wagtail.admin.views.generic.base import WagtailAdminTemplateMixin
from wagtail.admin.views.generic.permissions import PermissionCheckedMixin
from wagtail.permissions import policy_registry


class DeskViewSetMixin:
    """For a ``ModelViewSet`` with only an index and an inspect view (plus its own actions)."""

    #: The policy action that lets an editor open an object's inspect view (and so follow a
    #: link to it from Site history).
    inspect_permission = "view"
    #: Whether this viewset lists its model's permissions in Settings → Groups (False when
    #: another viewset's permissions govern it).
    registers_permissions = True

    model: Any

    def get_common_view_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        # No generic add, edit, delete, copy, history or usage view exists for these objects.
        return super().get_common_view_kwargs(  # type: ignore[misc, no-any-return]
            **{
                "add_url_name": None,
                "edit_url_name": None,
                "delete_url_name": None,
                "history_url_name": None,
                "usage_url_name": None,
                **kwargs,
            }
        )

    def get_permissions_to_register(self) -> Any:
        # Only the policy's own actions appear in Settings → Groups (not stale add, change or
        # delete permissions, which the policy never grants).
        if not self.registers_permissions:
            return Permission.objects.none()
        policy = policy_registry.get_by_type(self.model)
        return Permission.objects.filter(
            content_type=ContentType.objects.get_for_model(self.model),
            codename__in=policy.permission_codenames(),
        )

    @property
    def url_finder_class(self) -> type[ModelAdminURLFinder]:
        # Site history links an object's log entries to its inspect view, for those who may
        # open it.
        inspect_url_name = self.get_url_name("inspect")  # type: ignore[attr-defined]
        needed = self.inspect_permission

        class DeskURLFinder(ModelAdminURLFinder):
            edit_url_name = inspect_url_name

            def get_edit_url(self, instance: Any) -> str | None:
                policy = policy_registry.get(instance)
                if self.user and not policy.user_has_permission(self.user, needed):
                    return None
                return self.construct_edit_url(instance)

        return DeskURLFinder


class DeskObjectActionView(PermissionCheckedMixin, WagtailAdminTemplateMixin, FormView):
    """A confirmed action on one row of a desk listing (send an email again, reprocess an
    event): the row (404 only after the permission check, so a refused editor learns nothing),
    its inspect URL and the breadcrumbs back to the listing."""

    model: Any = None
    #: The listing's name in the breadcrumbs.
    index_label: Any = ""
    index_url_name: str | None = None
    inspect_url_name: str | None = None

    @cached_property
    def object(self) -> Any:
        return get_object_or_404(self.model, pk=self.kwargs["pk"])

    @property
    def inspect_url(self) -> str:
        return reverse(self.inspect_url_name or "", args=(quote(self.object.pk),))

    def get_breadcrumbs_items(self) -> list[dict[str, Any]]:
        return [
            *self.breadcrumbs_items,
            {"url": reverse(self.index_url_name or ""), "label": self.index_label},
            {"url": self.inspect_url, "label": str(self.object)},
            {"url": "", "label": self.get_page_title()},
        ]
