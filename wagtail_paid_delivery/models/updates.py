"""Update notices: past buyers told about a product's new release, and who asked not to be."""

from __future__ import annotations

import swapper
from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .outbox import OutboundEmail
from .purchases import Purchase


class UpdateNotice(models.Model):
    """One release told to a product's past buyers: made when a revision whose editor asked to
    notify is published (now or at its go-live), sent in batches by ``updates``.

    The run's progress is here and in its ``recipients``, so a restart resumes it."""

    product = models.ForeignKey(
        swapper.get_model_name("wagtailcore", "Page"),
        verbose_name=_("product"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    #: The published revision that asked for it.
    revision = models.ForeignKey(
        "wagtailcore.Revision",
        verbose_name=_("revision"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    #: What makes it one release (``updates.release_key``): publishing the same release again
    #: (the revision again, a bulk publish, a revert) makes no second notice.
    release_key = models.CharField(_("release"), max_length=64, editable=False)
    #: The editor's words, as published (later edits of the page change nothing sent).
    subject = models.CharField(_("subject"), max_length=200)
    message = models.TextField(_("message"))
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("published by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    #: When the next batch may be queued (``UPDATE_EMAILS_PER_MINUTE`` a minute).
    next_batch_at = models.DateTimeField(_("next batch"), null=True, blank=True, db_index=True)
    batches = models.PositiveIntegerField(_("batches queued"), default=0)
    #: Every buyer has their email promised (sending may still be under way).
    queued_at = models.DateTimeField(_("all queued"), null=True, blank=True)

    class Meta:
        verbose_name = _("update notice")
        verbose_name_plural = _("update notices")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "release_key"],
                name="wagtail_paid_delivery_one_update_notice_per_release",
            )
        ]

    def __str__(self) -> str:
        return self.subject


class UpdateRecipient(models.Model):
    """One buyer of one notice, and the email promised them: the unique constraints make each
    buyer (address) one email per notice, whatever runs twice."""

    notice = models.ForeignKey(
        UpdateNotice,
        verbose_name=_("update notice"),
        on_delete=models.CASCADE,
        related_name="recipients",
    )
    purchase = models.ForeignKey(
        Purchase, verbose_name=_("purchase"), on_delete=models.CASCADE, related_name="+"
    )
    #: ``updates.address_digest`` of the buyer's address (case-insensitive, no address kept).
    address_digest = models.CharField(_("address digest"), max_length=64)
    email = models.OneToOneField(
        OutboundEmail,
        verbose_name=_("email"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="update_recipient",
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("update recipient")
        verbose_name_plural = _("update recipients")
        constraints = [
            models.UniqueConstraint(
                fields=["notice", "address_digest"],
                name="wagtail_paid_delivery_one_update_email_per_address",
            ),
            models.UniqueConstraint(
                fields=["notice", "purchase"],
                name="wagtail_paid_delivery_one_update_email_per_purchase",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.notice} → purchase #{self.purchase_id}"


class UpdateOptOut(models.Model):
    """An address that unsubscribed from update emails (the link in every one of them)."""

    #: ``updates.address_digest`` of the address: compared without case, the address not kept.
    address_digest = models.CharField(_("address digest"), max_length=64, unique=True)
    created_at = models.DateTimeField(_("unsubscribed"), default=timezone.now)

    class Meta:
        verbose_name = _("update email opt-out")
        verbose_name_plural = _("update email opt-outs")

    def __str__(self) -> str:
        return f"opt-out {self.address_digest[:12]}"
