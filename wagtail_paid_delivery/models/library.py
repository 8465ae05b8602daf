"""The library's one-time sign-in links: only their hash is kept (see ``library``)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class LibrarySignIn(models.Model):
    """One emailed sign-in link to the buyer's library: short-lived, used once.

    The raw token (256 random bits) exists only in the email; this row keeps its SHA-256.
    ``library.use_sign_in`` spends it with a conditional UPDATE, so of two requests with the
    same token one wins. Removed by ``retention.cleanup`` once used or expired.
    """

    token_hash = models.CharField(_("token hash"), max_length=64, unique=True, editable=False)
    #: The address the link was sent to (the buyer's spelling on record): what it proves.
    email = models.EmailField(_("email"))
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"), db_index=True)
    used_at = models.DateTimeField(_("used"), null=True, blank=True)

    class Meta:
        verbose_name = _("library sign-in link")
        verbose_name_plural = _("library sign-in links")

    def __str__(self) -> str:
        return f"Library sign-in #{self.pk}"
