"""The Stripe webhook inbox: every verified event is stored before it is acknowledged.

``ReconcileMark`` is how far reconciliation has read Stripe's own list of events, so the events
a webhook never delivered still reach the inbox (see ``reconciliation``).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class StripeEvent(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", _("received")
        PROCESSED = "processed", _("processed")
        IGNORED = "ignored", _("ignored")
        FAILED = "failed", _("failed")

    stripe_id = models.CharField(_("Stripe event id"), max_length=255, unique=True)
    type = models.CharField(_("type"), max_length=100, db_index=True)
    livemode = models.BooleanField(_("live mode"), default=False)
    api_version = models.CharField(_("API version"), max_length=64, blank=True)
    payload = models.JSONField(_("payload"))
    received_at = models.DateTimeField(_("received"), default=timezone.now, db_index=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.RECEIVED, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt"), null=True, blank=True, db_index=True)
    last_error = models.TextField(_("last error"), blank=True)
    processed_at = models.DateTimeField(_("processed"), null=True, blank=True)
    purchase = models.ForeignKey(
        "wagtail_paid_delivery.Purchase",
        verbose_name=_("purchase"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="stripe_events",
    )

    class Meta:
        verbose_name = _("Stripe event")
        verbose_name_plural = _("Stripe events")
        ordering = ["-received_at"]
        # Events are stored by the webhook and moved by the inbox, never added, edited or
        # deleted as rows: what an editor may do is see them and reprocess one
        # (``permissions.EventPermissionPolicy``; the README's "The shop desk" section).
        default_permissions = ("view",)
        permissions = [("reprocess_stripeevent", _("Can reprocess Stripe events"))]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_id}"


class ReconcileMark(models.Model):
    """A high-water mark: reconciliation has listed every Stripe event created before
    ``listed_until`` (and stored the ones the inbox lacked). One row per name (a Stripe mode)."""

    name = models.CharField(_("name"), max_length=64, unique=True)
    listed_until = models.DateTimeField(_("events listed until"))
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("reconciliation mark")
        verbose_name_plural = _("reconciliation marks")

    def __str__(self) -> str:
        return f"{self.name}: {self.listed_until.isoformat(timespec='seconds')}"


class ClusterHeartbeat(models.Model):
    """When a task cluster last ran the app's every-minute sweep (``heartbeat.beat``).

    One row per name (today only ``sweep``). The dashboard and the self-test read it: an old
    beat means no cluster picks up work, so events, emails and retries wait.
    """

    name = models.CharField(_("name"), max_length=64, unique=True)
    beat_at = models.DateTimeField(_("last beat"))

    class Meta:
        verbose_name = _("cluster heartbeat")
        verbose_name_plural = _("cluster heartbeats")
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.name} {self.beat_at.isoformat(timespec='seconds')}"
