"""The email outbox: every email the app promised to send, and how far it got."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .purchases import DownloadLink, Purchase


class OutboundEmail(models.Model):
    """One promised email: what to send (never its rendered body, never a raw token), its
    attempts and their outcome. ``outbox`` sends it; see that module for the rules."""

    class Kind(models.TextChoices):
        #: The delivery email of a paid purchase: one per purchase.
        DELIVERY = "delivery", _("delivery email")
        #: The buyer asked for their links again (resend/): every paid purchase of the address.
        RESEND = "resend", _("links sent again")
        #: The shop desk sent a purchase's delivery email with the link an editor issued.
        DESK = "desk", _("delivery email from the shop desk")
        #: A one-time sign-in link to the library (library/), for an address that bought.
        LIBRARY_SIGN_IN = "library_sign_in", _("library sign-in link")
        #: A new sale, told to the shop's staff (NEW_SALE_EMAILS, and users who opted in): one
        #: per purchase and recipient.
        NEW_SALE = "new_sale", _("new sale notice")
        #: An asynchronous payment (a bank debit) failed: nothing is delivered; try again.
        PAYMENT_FAILED = "payment_failed", _("failed payment notice")
        #: A product's new release, told to a past buyer (``updates``): one per buyer and notice.
        UPDATE = "update", _("update notice")

    class Status(models.TextChoices):
        #: Not sent yet: waiting for its first attempt, for its next one, or being sent.
        PENDING = "pending", _("waiting to be sent")
        SENT = "sent", _("sent")
        #: Every attempt failed (MAX_EMAIL_ATTEMPTS): the shop owner should look.
        FAILED = "failed", _("failed")
        #: Nothing to send any more (the purchase was refunded, no address): see last_error.
        CANCELLED = "cancelled", _("not sent")

    kind = models.CharField(_("kind"), max_length=32, choices=Kind.choices)
    to = models.EmailField(_("recipient"), blank=True)
    #: The purchase the email is about (the delivery email, the desk's); an email about several
    #: purchases (a resend) lists them in ``purchases`` instead.
    purchase = models.ForeignKey(
        Purchase,
        verbose_name=_("purchase"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="emails",
    )
    purchases = models.ManyToManyField(
        Purchase, verbose_name=_("purchases listed"), blank=True, related_name="+"
    )
    #: The link an editor issued, for the desk's emails: every attempt sends it with a new token
    #: (a failed attempt's token is discarded), so its number, expiry and limit stay the editor's.
    link = models.ForeignKey(
        DownloadLink,
        verbose_name=_("link"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    #: Makes a repeated request (a task the broker ran twice) one email: e.g. "resend:<uuid>".
    idempotency_key = models.CharField(
        _("idempotency key"), max_length=64, unique=True, null=True, blank=True, editable=False
    )
    #: Fixed when the email is promised and sent with every attempt, so a message that arrives
    #: twice (the worker died after the mail server took it) is shown once.
    message_id = models.CharField(_("Message-ID"), max_length=255, unique=True, editable=False)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    #: When a pending email is tried next; while it is being sent, the end of that claim's lease.
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True, db_index=True)
    last_error = models.TextField(_("last error"), blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    last_attempt_at = models.DateTimeField(_("last attempt"), null=True, blank=True)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)

    class Meta:
        verbose_name = _("outbound email")
        verbose_name_plural = _("outbound emails")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "purchase"],
                condition=Q(kind="delivery"),
                name="wagtail_paid_delivery_one_delivery_email_per_purchase",
            ),
            models.UniqueConstraint(
                fields=["kind", "purchase"],
                condition=Q(kind="payment_failed"),
                name="wagtail_paid_delivery_one_failed_payment_email_per_purchase",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.get_status_display()})"
