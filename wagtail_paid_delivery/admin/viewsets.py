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
    list_display = ["name", "is_default", "language", "translation_of"]
    search_fields = ["name"]
    #: Tabs follow the buyer's path: after paying, the email, the download page, the way back in.
    edit_handler = TabbedInterface(
        [
            ObjectList(
                [
                    FieldPanel("name"),
                    FieldPanel("is_default"),
                    MultiFieldPanel(
                        [FieldPanel("translation_of"), FieldPanel("language")],
                        heading=_("Translation"),
                    ),
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
                        _copy_fields("refunded_title", "refunded_message"),
                        heading=_("Refunded"),
                        help_text=_("Also on the page of a link of a refunded purchase."),
                    ),
                    MultiFieldPanel(
                        _copy_fields("shop_revoked_title", "shop_revoked_message"),
                        heading=_("Revoked by the shop"),
                        help_text=_("Also on the page of a link of a revoked purchase."),
                    ),
                    MultiFieldPanel(
                        _copy_fields("suspended_title", "suspended_message"),
                        heading=_("Suspended during a dispute"),
                        help_text=_("Also on the page of a link while the dispute lasts."),
                    ),
                    MultiFieldPanel(
                        _copy_fields("checkout_unavailable_title", "checkout_unavailable_message"),
                        heading=_("Checkout unavailable"),
                    ),
                ],
                heading=_("After checkout"),
            ),
            ObjectList(
                [
                    MultiFieldPanel(
                        _copy_fields("email_subject", "email_body"), heading=_("Delivery email")
                    ),
                    MultiFieldPanel(
                        _copy_fields("payment_failed_email_subject", "payment_failed_email_body"),
                        heading=_("Failed payment email"),
                        help_text=_(
                            "Sent when a bank debit fails after checkout, with a button back to "
                            "the product page."
                        ),
                    ),
                ],
                heading=_("Email"),
            ),
            ObjectList(
                _copy_fields(
                    "download_intro", "expired_message", "used_up_message", "revoked_message"
                ),
                heading=_("Download page"),
            ),
            ObjectList(
                _copy_fields(
                    "resend_intro",
                    "resend_confirmation",
                    "resend_sent",
                    "resend_email_subject",
                    "resend_email_intro",
                ),
                heading=_("Resend links"),
            ),
        ]
    )
