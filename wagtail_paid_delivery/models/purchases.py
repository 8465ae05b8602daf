"""Purchases and the download links that deliver them."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import swapper
from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .. import currencies, order_numbers
from .pages import ProductPageMixin


class Purchase(models.Model):
    """One buyer's purchase of one product, moved by the state machine (``fulfillment``)."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        PAID = "paid", _("paid")
        FAILED = "failed", _("failed")
        EXPIRED = "expired", _("expired")
        REFUNDED = "refunded", _("refunded")
        DISPUTED = "disputed", _("disputed")
        REVOKED = "revoked", _("revoked")

    class Source(models.TextChoices):
        CHECKOUT = "checkout", _("Stripe Checkout")
        GRANT = "grant", _("granted by an editor")
        #: A product included in a bundle that was bought: no money of its own (amount 0),
        #: never a sale; moves with its bundle (``fulfillment``).
        BUNDLE = "bundle", _("included in a bundle")

    public_id = models.UUIDField(_("public id"), default=uuid.uuid4, unique=True, editable=False)
    # SET_NULL, not PROTECT: unpaid purchases must not block deleting a page. Deleting a product
    # with paid purchases is refused earlier, in the admin, with a message.
    product = models.ForeignKey(
        swapper.get_model_name("wagtailcore", "Page"),
        verbose_name=_("product"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # A snapshot of what was sold, kept even if the page changes or goes.
    product_title = models.CharField(_("product title"), max_length=255)
    amount = models.PositiveIntegerField(_("amount (minor units)"))
    currency = models.CharField(_("currency"), max_length=3)
    amount_refunded = models.PositiveIntegerField(_("amount refunded"), default=0)
    #: The reference a buyer quotes (``order_numbers``): short, random, unique.
    order_number = models.CharField(
        _("order number"),
        max_length=order_numbers.MAX_LENGTH,
        unique=True,
        default=order_numbers.new_order_number,
        editable=False,
    )
    #: The receipt: what the paid Checkout Session charged, recorded at fulfillment
    #: (``receipt.record_payment``) so no page asks Stripe. ``amount_total`` None: not recorded
    #: (a grant, or paid before receipts were kept); the receipt then shows ``amount``.
    paid_currency = models.CharField(_("currency charged"), max_length=3, blank=True)
    amount_subtotal = models.PositiveIntegerField(_("subtotal charged"), null=True, blank=True)
    amount_discount = models.PositiveIntegerField(_("discount"), default=0)
    amount_tax = models.PositiveIntegerField(_("tax"), default=0)
    amount_total = models.PositiveIntegerField(_("total charged"), null=True, blank=True)
    #: Stripe's receipt for the charge (the Charge's ``receipt_url``), when it has one.
    receipt_url = models.URLField(_("Stripe receipt"), max_length=500, blank=True)

    email = models.EmailField(_("buyer email"), blank=True)
    #: The buyer's language at checkout (``languages``): their emails and the pages their links
    #: open speak it. Empty: the site's default language.
    language = models.CharField(_("language"), max_length=35, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="paid_delivery_purchases",
    )
    source = models.CharField(
        _("source"), max_length=16, choices=Source.choices, default=Source.CHECKOUT
    )
    #: The bundle purchase this one was included in (``Source.BUNDLE``); None otherwise.
    bundle = models.ForeignKey(
        "self",
        verbose_name=_("bundle"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="included",
    )
    stripe_checkout_session_id = models.CharField(
        _("Checkout Session id"), max_length=255, unique=True, null=True, blank=True
    )
    #: What the Buy form's nonce (made by checkout.js) keys: a SHA-256 over the product, the
    #: browser's scope and the nonce (``checkout.nonce_key``), never the nonce itself. Unique, so
    #: two POSTs of one click arrive at one purchase; see ``checkout.start_checkout``.
    checkout_nonce = models.CharField(
        _("checkout nonce (hashed)"),
        max_length=64,
        unique=True,
        null=True,
        blank=True,
        editable=False,
    )
    stripe_payment_intent_id = models.CharField(
        _("PaymentIntent id"), max_length=255, blank=True, db_index=True
    )
    livemode = models.BooleanField(_("live mode"), default=False)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    status_reason = models.TextField(_("status reason"), blank=True)

    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    paid_at = models.DateTimeField(_("paid"), null=True, blank=True)
    failed_at = models.DateTimeField(_("failed"), null=True, blank=True)
    expired_at = models.DateTimeField(_("expired"), null=True, blank=True)
    refunded_at = models.DateTimeField(_("refunded"), null=True, blank=True)
    disputed_at = models.DateTimeField(_("disputed"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    delivery_email_sent_at = models.DateTimeField(_("delivery email sent"), null=True, blank=True)
    #: Reconciliation's polling of a pending purchase (see ``reconciliation``): how often Stripe
    #: was asked about it, and when it may be asked next (None: not yet asked).
    reconcile_checks = models.PositiveSmallIntegerField(_("reconciliation checks"), default=0)
    reconcile_after = models.DateTimeField(_("next reconciliation check"), null=True, blank=True)
    #: When the buyer's personal data was erased (``buyer_data.erase``): Stripe's copy of the
    #: address is not put back on the purchase after that.
    erased_at = models.DateTimeField(_("buyer data erased"), null=True, blank=True)

    class Meta:
        verbose_name = _("purchase")
        verbose_name_plural = _("purchases")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["email", "status"])]
        constraints = [
            # One included purchase per product of a bundle purchase, however often it is paid.
            models.UniqueConstraint(
                fields=["bundle", "product"],
                condition=models.Q(bundle__isnull=False),
                name="wpd_one_included_purchase_per_product",
            )
        ]
        # Purchases are made by checkout and moved by the state machine, never added, edited or
        # deleted as rows: the shop desk's permissions are what an editor may do with them
        # (``permissions.PurchasePermissionPolicy``; the README's "The shop desk" section).
        default_permissions = ("view",)
        permissions = [
            (
                "support_purchase",
                _(
                    "Can help buyers (resend the delivery email, issue, extend or reset a link, "
                    "correct the email address)"
                ),
            ),
            ("revoke_purchase", _("Can revoke, suspend and restore access to purchases")),
            ("refund_purchase", _("Can refund purchases through Stripe")),
            ("grant_purchase", _("Can grant complimentary purchases")),
            ("manage_buyer_data_purchase", _("Can export and erase a buyer's personal data")),
        ]

    def __str__(self) -> str:
        return f"{self.product_title} – {self.email or self.public_id}"

    @property
    def price_display(self) -> str:
        return currencies.format_price(self.amount, self.currency)

    @property
    def paid_display(self) -> str:
        """What the buyer paid, as their receipt's total says (tax and discounts included);
        the price when no total was recorded."""
        paid = self.amount if self.amount_total is None else self.amount_total
        return currencies.format_price(paid, self.currency)

    @property
    def amount_major(self) -> Decimal:
        """The amount in major units (12.50 for 1250 USD cents), for exports."""
        return currencies.to_major(self.amount, self.currency)

    @property
    def amount_refunded_major(self) -> Decimal:
        return currencies.to_major(self.amount_refunded, self.currency)

    @property
    def product_page(self) -> Any:
        """The product page sold, as its specific type; None when it is gone (or not a product)."""
        page = self.product
        specific = page.specific if page is not None else None
        return specific if isinstance(specific, ProductPageMixin) else None


class DownloadLink(models.Model):
    """An expiring, revocable entitlement to a purchase's files. Only the token's hash is kept."""

    class Reason(models.TextChoices):
        WEBHOOK = "webhook", _("payment confirmed")
        SUCCESS_PAGE = "success_page", _("success page")
        RESEND = "resend", _("resend request")
        LIBRARY = "library", _("buyer's library")
        ADMIN = "admin", _("editor")
        UPDATE = "update", _("update notice")

    purchase = models.ForeignKey(
        Purchase, verbose_name=_("purchase"), on_delete=models.CASCADE, related_name="links"
    )
    token_hash = models.CharField(_("token hash"), max_length=64, unique=True, editable=False)
    reason = models.CharField(_("issued for"), max_length=16, choices=Reason.choices)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires"))
    download_limit = models.PositiveIntegerField(
        _("downloads per file"), null=True, blank=True, help_text=_("Empty: unlimited.")
    )
    #: Downloads counted on this link, all files together.
    download_count = models.PositiveIntegerField(_("downloads"), default=0)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        verbose_name = _("download link")
        verbose_name_plural = _("download links")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.purchase} ({self.get_reason_display()})"


class FileDownloadCount(models.Model):
    """The per-file counter a download locks and increments (the limit is per file, per link)."""

    link = models.ForeignKey(DownloadLink, on_delete=models.CASCADE, related_name="file_counts")
    # The id of the product's file; product file models are site-defined, hence no foreign key.
    file_id = models.PositiveBigIntegerField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = _("file download count")
        verbose_name_plural = _("file download counts")
        constraints = [
            models.UniqueConstraint(
                fields=["link", "file_id"], name="wagtail_paid_delivery_one_count_per_file"
            )
        ]

    def __str__(self) -> str:
        return f"{self.link_id}/{self.file_id}: {self.count}"


class DownloadEvent(models.Model):
    """Every request for a file's bytes: served, or refused and why."""

    link = models.ForeignKey(
        DownloadLink,
        verbose_name=_("link"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="events",
    )
    file_id = models.PositiveBigIntegerField(_("file id"), null=True, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    outcome = models.CharField(_("outcome"), max_length=32)
    counted = models.BooleanField(_("counted"), default=False)
    #: The hand-off (one button press) the request came through (``DownloadHandoff.nonce``).
    #: Not indexed: no query looks events up by hand-off, and a counted download writes one
    #: event, so each index is a page more in its commit.
    handoff = models.CharField(_("hand-off"), max_length=32, blank=True)
    range_header = models.CharField(_("range"), max_length=100, blank=True)
    #: What the response promised (its Content-Length, or what the offload server will send):
    #: what the hand-off's byte budget was charged with.
    bytes_promised = models.BigIntegerField(_("bytes promised"), null=True, blank=True)
    bytes_sent = models.BigIntegerField(_("bytes sent"), null=True, blank=True)
    ip_address = models.GenericIPAddressField(_("IP address (truncated)"), null=True, blank=True)
    user_agent = models.CharField(_("user agent"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("download event")
        verbose_name_plural = _("download events")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.outcome}"


class DownloadHandoff(models.Model):
    """One button press's hand-off: the download it stands on, what it promised, if refused.

    Written only under the link and file's ``FileDownloadCount`` row lock (``links``), which
    every request on the hand-off takes, so its requests are decided one at a time. See
    docs/architecture.md, "What counts as a download".
    """

    link = models.ForeignKey(
        DownloadLink, verbose_name=_("link"), on_delete=models.CASCADE, related_name="handoffs"
    )
    file_id = models.PositiveBigIntegerField(_("file id"))
    #: The random part of the signed hand-off URL (``links.Handoff.nonce``).
    nonce = models.CharField(_("nonce"), max_length=32, unique=True)
    created_at = models.DateTimeField(_("first used"), default=timezone.now)
    #: When the download this hand-off's requests stand on was counted (its window starts
    #: there). Empty: no count stands (never served, or the count was given back).
    counted_at = models.DateTimeField(_("counted"), null=True, blank=True)
    #: The request that counted it (released if its response sent nothing). Only its id is
    #: compared (``links.release_download``), so it is neither indexed nor a constraint: every
    #: counted download writes it, and deleting old events (retention, erasure) leaves hand-offs
    #: alone. Event ids are never reused, so a deleted event's id matches no later request.
    counted_event = models.ForeignKey(
        DownloadEvent,
        verbose_name=_("counted request"),
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_index=False,
        db_constraint=False,
        related_name="+",
    )
    #: Bytes promised by the responses served since ``counted_at``, the counted one included.
    bytes_promised = models.BigIntegerField(_("bytes promised"), default=0)
    #: Refused at the download limit: from then on it serves nothing, whatever happens later.
    refused_at = models.DateTimeField(_("refused"), null=True, blank=True)

    class Meta:
        verbose_name = _("download hand-off")
        verbose_name_plural = _("download hand-offs")

    def __str__(self) -> str:
        return f"{self.link_id}/{self.file_id}: {self.nonce}"
