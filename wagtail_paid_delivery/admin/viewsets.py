"""Wagtail admin viewsets; registered in wagtail_hooks.py."""

from django.utils.translation import gettext_lazy as _
from wagtail.admin.panels import FieldPanel, MultiFieldPanel, ObjectList, TabbedInterface
from wagtail.snippets.views.snippets import SnippetViewSet

from ..models import DeliveryCopy


def _copy_fields(*names: str) -> list[FieldPanel]:
    return [FieldPanel(name) for name in names]


class DeliveryCopyViewSet(SnippetViewSet):
    model = DeliveryCopy
    #: Shown in the admin menu, under Snippets.
    icon = "openquote"
    menu_label = _("Delivery copy")
    list_display = ["name", "is_default"]
    search_fields = ["name"]
    #: Tabs follow the buyer's path: after paying, the email, the download page, the way back in.
    edit_handler = TabbedInterface(
        [
            ObjectList(
                [
                    FieldPanel("name"),
                    FieldPanel("is_default"),
                    FieldPanel("contact_line"),
                    MultiFieldPanel(
                        _copy_fields("success_title", "success_message"), heading=_("Paid")
                    ),
                    MultiFieldPanel(
                        _copy_fields("pending_title", "pending_message"), heading=_("Pending")
                    ),
                    MultiFieldPanel(
                        _copy_fields("failed_title", "failed_message"), heading=_("Failed")
                    ),
                    MultiFieldPanel(
                        _copy_fields("neutral_title", "neutral_message"),
                        heading=_("Another browser"),
                    ),
                    MultiFieldPanel(
                        _copy_fields("checkout_unavailable_title", "checkout_unavailable_message"),
                        heading=_("Checkout unavailable"),
                    ),
                ],
                heading=_("After checkout"),
            ),
            ObjectList(_copy_fields("email_subject", "email_body"), heading=_("Email")),
            ObjectList(
                _copy_fields(
                    "download_intro", "expired_message", "used_up_message", "revoked_message"
                ),
                heading=_("Download page"),
            ),
            ObjectList(
                _copy_fields("resend_intro", "resend_confirmation"), heading=_("Resend links")
            ),
        ]
    )
