"""Who may do what at the shop desk: a Wagtail permission policy over Django model permissions.

Purchases are created by checkout and moved by the state machine (``fulfillment``); nobody adds,
edits or deletes them as rows. What an editor may do is one of the desk's actions below, each a
Django permission on ``Purchase`` (``Meta.permissions``), given to a group in Settings → Groups.
Superusers have them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.apps import apps
from wagtail.permission_policies import ModelPermissionPolicy
from wagtail.permissions import policy_registry

#: See the purchases listing, each purchase's inspect view and timeline, and export the listing.
VIEW = "view"
#: Help a buyer: resend the delivery email, issue a new link, extend a link or reset its counts,
#: correct the email address (and send a fresh link to it).
SUPPORT = "support"
#: Revoke access (for good), suspend it, and restore a suspended purchase.
REVOKE = "revoke"
#: Refund through Stripe, in full or in part (``refunds.refund``).
REFUND = "refund"
#: Grant a complimentary purchase.
GRANT = "grant"

#: Export everything stored about a buyer's address, or erase it (``buyer_data``).
MANAGE_BUYER_DATA = "manage_buyer_data"

#: Every action the policy knows; ``add``, ``change`` and ``delete`` are not among them.
ACTIONS = frozenset({VIEW, SUPPORT, REVOKE, REFUND, GRANT, MANAGE_BUYER_DATA})


#: Stripe events: see the event inbox (listing and each event's payload).
VIEW_EVENTS = "view"
#: Stripe events: run a stored event again (``desk.reprocess_event``).
REPROCESS = "reprocess"
#: Every action the events' policy knows.
EVENT_ACTIONS = frozenset({VIEW_EVENTS, REPROCESS})


class PurchasePermissionPolicy(ModelPermissionPolicy):
    """``ModelPermissionPolicy`` limited to the desk's actions (``<action>_purchase``).

    Wagtail's generic views ask for ``add``, ``change`` and ``delete``; for a purchase nobody has
    those, superusers included, so no generic add, edit or delete screen ever opens on one.
    """

    #: The actions this policy grants; any other (``add``, ``change``…) is refused.
    actions: frozenset[str] = ACTIONS

    def user_has_permission(self, user: Any, action: str) -> bool:
        return action in self.actions and super().user_has_permission(user, action)

    def users_with_any_permission(self, actions: Iterable[str]) -> Any:
        return super().users_with_any_permission([a for a in actions if a in self.actions])

    def permission_codenames(self) -> list[str]:
        """The codenames an administrator can give to a group (Settings → Groups)."""
        return sorted(self._get_permission_codenames(self.actions))


class EventPermissionPolicy(PurchasePermissionPolicy):
    """The same policy for Stripe events (``view_stripeevent``, ``reprocess_stripeevent``)."""

    actions = EVENT_ACTIONS


class EmailPermissionPolicy(PurchasePermissionPolicy):
    """The outbox's emails are governed by the purchases' permissions (give it a purchase
    model: ``EmailPermissionPolicy(Purchase)``): ``view_purchase`` lists the emails that failed
    or are retrying, ``support_purchase`` sends a failed one again. Nothing of their own to
    give a group."""

    actions = frozenset({VIEW, SUPPORT})


def may_view_purchases(user: Any) -> bool:
    """Superusers and editors whose group has ``view_purchase`` (the desk's pages, the product
    editor's sales panel, the delivery self-test)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    policy = policy_registry.get_by_type(apps.get_model("wagtail_paid_delivery", "Purchase"))
    return bool(user.is_superuser or policy.user_has_permission(user, VIEW))
