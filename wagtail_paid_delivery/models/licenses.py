"""License keys issued with paid purchases, and the app instances they are activated on.

At rest a key is its random id and what its payload says; the key text itself is the payload
signed again with ``LICENSE_SIGNING_KEY`` when shown (Ed25519 signatures are deterministic),
so the database never holds a key someone could paste (``licenses``).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .purchases import Purchase


class LicenseKey(models.Model):
    """The one key of a purchase of a product with license keys (issued when it is paid)."""

    purchase = models.OneToOneField(
        Purchase, verbose_name=_("purchase"), on_delete=models.CASCADE, related_name="license_key"
    )
    #: The random id inside the key (hex): how a presented key finds its row.
    key_id = models.CharField(_("key id"), max_length=24, unique=True, editable=False)
    #: The product id and the issue date inside the key, kept as signed.
    product_id = models.PositiveIntegerField(_("product id"), editable=False)
    issued_on = models.DateField(_("issued on"), editable=False)
    #: Activations allowed at once, copied from the product when issued. 0: unlimited.
    activation_limit = models.PositiveIntegerField(_("activation limit"), default=0)
    created_at = models.DateTimeField(_("created"), default=timezone.now)

    class Meta:
        verbose_name = _("license key")
        verbose_name_plural = _("license keys")

    def __str__(self) -> str:
        return f"{self.key_id} ({self.purchase_id})"


class LicenseActivation(models.Model):
    """One app instance a key is active on; released ones stay as history."""

    class ReleasedBy(models.TextChoices):
        CLIENT = "client", _("the app (deactivate)")
        SHOP = "shop", _("the shop")

    license = models.ForeignKey(
        LicenseKey,
        verbose_name=_("license key"),
        on_delete=models.CASCADE,
        related_name="activations",
    )
    #: What the app sends to name itself (a machine or installation id it chose).
    instance_id = models.CharField(_("instance id"), max_length=200)
    activated_at = models.DateTimeField(_("activated"), default=timezone.now)
    released_at = models.DateTimeField(_("released"), null=True, blank=True)
    released_by = models.CharField(
        _("released by"), max_length=8, choices=ReleasedBy.choices, blank=True
    )

    class Meta:
        verbose_name = _("license activation")
        verbose_name_plural = _("license activations")
        ordering = ["activated_at"]
        constraints = [
            # One live activation per instance: activating again is a no-op, not a second seat.
            models.UniqueConstraint(
                fields=["license", "instance_id"],
                condition=models.Q(released_at=None),
                name="wpd_one_live_activation_per_instance",
            )
        ]

    def __str__(self) -> str:
        return self.instance_id
