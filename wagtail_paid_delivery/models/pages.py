"""The product page behaviour (a mixin for any Wagtail base Page) and its private files."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import zlib
from datetime import timedelta
from typing import Any

import swapper
from django.apps import apps
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.template.defaultfilters import filesizeformat
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _
from modelcluster.models import get_serializable_data_for_fields
from wagtail.admin.panels import FieldPanel, FieldRowPanel, InlinePanel, MultiFieldPanel
from wagtail.fields import RichTextField
from wagtail.models import Orderable

from .. import currencies
from ..conf import app_settings
from ..forms import ProductPageForm
from ..panels import FileVersionsPanel, ProductSalesPanel, UpdateNoticesPanel
from ..storage import get_product_storage, product_file_upload_to, storage_errors
from .copy import DeliveryCopy
from .versions import FileVersion

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "wagtail_paid_delivery/product_page.html"
#: The product page's preview mode that shows the update email.
UPDATE_EMAIL_PREVIEW = "update_email"
#: Bytes read at a time when measuring a stored file.
CHUNK = 1024 * 1024


class ProductPageMixin(models.Model):
    """Everything a product page needs; combine with your site's base Page.

    A site using Wagtail's own Page installs ``wagtail_paid_delivery.product`` instead; a site
    with its own base Page writes the same few lines against that base::

        class ProductPage(ProductPageMixin, BasePage):
            content_panels = BasePage.content_panels + ProductPageMixin.product_panels

        class ProductFile(AbstractProductFile):
            page = ParentalKey(ProductPage, related_name="files", on_delete=models.CASCADE)
    """

    intro = models.TextField(_("introduction"), blank=True)
    body = RichTextField(_("description"), blank=True)
    price_amount = models.PositiveIntegerField(
        _("price"),
        validators=[MinValueValidator(1, _("Enter a price above zero."))],
        help_text=_("What the buyer pays, in the chosen currency."),
    )
    currency = models.CharField(
        _("currency"), max_length=3, choices=currencies.CHOICES, default="USD"
    )
    stripe_price_id = models.CharField(
        _("Stripe Price id"),
        max_length=255,
        blank=True,
        validators=[
            RegexValidator(r"^price_[A-Za-z0-9]+$", _("A Stripe Price id starts with 'price_'."))
        ],
        help_text=_(
            "Optional. An existing Price in your Stripe account; it must have the same amount "
            "and currency. Leave empty and the price above is sent to Stripe as it is."
        ),
    )
    pay_what_you_want = models.BooleanField(
        _("pay what you want"),
        default=False,
        help_text=_(
            "Buyers choose the amount; the price above is the minimum (and the amount "
            "suggested). The shop makes the Stripe Price itself."
        ),
    )
    #: The Stripe Price (``custom_unit_amount``) the shop made for pay what you want, and the
    #: currency, minimum and page it was made for ("USD 500 7"): a change makes a new one (a
    #: copied page too: the copy is another product).
    custom_price_id = models.CharField(max_length=255, blank=True, editable=False)
    custom_price_terms = models.CharField(max_length=64, blank=True, editable=False)
    delivery_copy = models.ForeignKey(
        DeliveryCopy,
        verbose_name=_("delivery copy"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The words buyers read after paying. Empty: the site default."),
    )
    link_lifetime_hours = models.PositiveIntegerField(
        _("download link lifetime (hours)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1, _("A link must live at least one hour."))],
        help_text=_("Empty: the site default."),
    )
    download_limit = models.PositiveIntegerField(
        _("downloads per file"),
        null=True,
        blank=True,
        help_text=_("Per file, per link. Empty: the site default. 0: unlimited."),
    )

    class PastBuyersGet(models.TextChoices):
        LATEST = "latest", _("the latest version")
        BOUGHT = "bought", _("the version they bought")

    #: Which version of each file a past buyer's link serves (``versions.entitled_version``).
    past_buyers_get = models.CharField(
        _("past buyers get"),
        max_length=6,
        choices=PastBuyersGet.choices,
        default=PastBuyersGet.LATEST,
        help_text=_(
            "When you replace a file: what buyers who paid before get. The version they bought "
            "is the one that was current when their payment went through."
        ),
    )
    license_activation_limit = models.PositiveIntegerField(
        _("license key activations"),
        null=True,
        blank=True,
        help_text=_(
            "Empty: no license keys. A number: each paid purchase gets a signed license key, "
            "active on at most this many app instances at once (0: unlimited)."
        ),
    )

    #: Tell past buyers on this publish: the choice is stored in the revision being published
    #: (now or at its go-live) and starts unticked in every edit (``ProductPageForm``), so a
    #: later publish tells nobody unless asked again. The subject and message are the editor's
    #: words of the update email (``updates.build_update_email``).
    notify_buyers = models.BooleanField(
        _("email past buyers when this is published"),
        default=False,
        help_text=_(
            "Paid buyers and those granted the product get the update email once, with fresh "
            "download links. Refunded and revoked buyers, and addresses that unsubscribed, "
            "do not. Preview it with the “Update email” preview mode."
        ),
    )
    update_subject = models.CharField(_("update email subject"), max_length=200, blank=True)
    update_message = models.TextField(
        _("update email message"),
        blank=True,
        help_text=_("What changed. Plain text; the email adds the download button."),
    )

    #: Panels for the product's own fields; add them to your base page's ``content_panels``.
    product_panels = [
        FieldPanel("intro"),
        FieldPanel("body"),
        MultiFieldPanel(
            [
                FieldRowPanel([FieldPanel("price_amount"), FieldPanel("currency")]),
                FieldPanel("pay_what_you_want"),
                FieldPanel("stripe_price_id"),
            ],
            heading=_("Price"),
        ),
        InlinePanel("files", heading=_("Files"), label=_("File")),
        InlinePanel(
            "bundle_items",
            heading=_("Included products (bundle)"),
            label=_("Included product"),
            help_text=_(
                "Buying this page grants each product listed here as if it were bought, for "
                "this page's own price. A bundle cannot include another bundle."
            ),
        ),
        #: Read-only: each file's published versions, newest first.
        FileVersionsPanel(),
        MultiFieldPanel(
            [
                FieldPanel("delivery_copy"),
                FieldRowPanel([FieldPanel("link_lifetime_hours"), FieldPanel("download_limit")]),
                FieldPanel("past_buyers_get"),
                FieldPanel("license_activation_limit"),
            ],
            heading=_("Delivery"),
        ),
        MultiFieldPanel(
            [
                FieldPanel("notify_buyers"),
                FieldPanel("update_subject"),
                FieldPanel("update_message"),
            ],
            heading=_("Update notice"),
        ),
        #: Read-only: sales, revenue, refunds, downloads per file (purchase viewers only).
        ProductSalesPanel(),
        #: Read-only: each update notice's progress and failures (purchase viewers only).
        UpdateNoticesPanel(),
    ]

    base_form_class = ProductPageForm

    class Meta:
        abstract = True

    # Shown to buyers and editors.

    @property
    def price_display(self) -> str:
        return currencies.format_price(self.price_amount, self.currency)

    @property
    def custom_price_wanted(self) -> str:
        """The terms the pay-what-you-want Price must have: currency, minimum and page."""
        return f"{self.currency} {self.price_amount} {self.pk}"

    @cached_property
    def product_files(self) -> list[AbstractProductFile]:
        return list(self.files.all())  # type: ignore[attr-defined]

    @cached_property
    def included_products(self) -> list[Any]:
        """The products this bundle includes, as their specific pages, in the editor's order;
        empty for a product that is not a bundle. Only product pages count (``bundles``)."""
        items = self.bundle_items  # type: ignore[attr-defined]
        # The ids first: most products are no bundle, and that costs one narrow query.
        ids = list(items.values_list("product_id", flat=True))
        if not ids:
            return []
        page_model = items.model._meta.get_field("product").related_model
        found = {page.pk: page for page in page_model.objects.filter(pk__in=ids).specific()}
        pages = [found.get(pk) for pk in ids]
        return [page for page in pages if isinstance(page, ProductPageMixin)]

    @property
    def is_bundle(self) -> bool:
        return self.bundle_items.exists()  # type: ignore[attr-defined]

    def bundle_problems(self, chosen: list[Any], *, publishing: bool) -> dict[int, str]:
        """What is wrong with including ``chosen`` (pages, in the editor's order) in this page,
        by position in ``chosen`` (-1: the list as a whole); empty when nothing is.

        Bundles do not nest: a bundle inside a bundle would make cycles possible and leave the
        buyer to guess what they own, so a bundle lists products, not bundles, and a product in a
        bundle cannot become one. At publish, every included product must be live.
        """
        problems: dict[int, str] = {}
        item_model = self._meta.get_field("bundle_items").related_model
        if chosen and self.pk:
            holders = (
                item_model._default_manager.filter(product_id=self.pk)  # type: ignore[union-attr]
                .exclude(bundle_id=self.pk)
                .values_list("bundle__title", flat=True)
            )
            if holders:
                problems[-1] = str(
                    _(
                        "This product is included in %(bundles)s, and a bundle cannot include "
                        "another bundle. Remove it from there first, or include no products here."
                    )
                ) % {"bundles": ", ".join(f"“{title}”" for title in sorted(set(holders)))}
        seen: set[int] = set()
        for index, page in enumerate(chosen):
            problem = self._included_problem(page, seen, publishing)
            if problem:
                problems[index] = problem
            seen.add(page.pk)
        return problems

    def _included_problem(self, page: Any, seen: set[int], publishing: bool) -> str:
        specific = page.specific
        values = {"title": page.title}
        if not isinstance(specific, ProductPageMixin):
            return (
                str(_("“%(title)s” is not a product page: only products can be included.")) % values
            )
        if self.pk is not None and page.pk == self.pk:
            return str(_("A bundle cannot include itself."))
        if page.pk in seen:
            return str(_("“%(title)s” is included twice.")) % values
        if specific.is_bundle:
            return (
                str(
                    _(
                        "“%(title)s” is a bundle itself, and bundles cannot include bundles: "
                        "include its products instead."
                    )
                )
                % values
            )
        if publishing and not specific.live:  # type: ignore[attr-defined]
            return (
                str(
                    _(
                        "“%(title)s” is not published: publish it first, or buyers of this bundle "
                        "would get nothing from it."
                    )
                )
                % values
            )
        return ""

    @property
    def is_purchasable(self) -> bool:
        # A bundle may have no files of its own: its included products are what it delivers.
        has_files = self.files.exists()  # type: ignore[attr-defined]
        return bool(self.live) and (has_files or self.is_bundle)  # type: ignore[attr-defined]

    # Delivery rules: the product's own value, else the site default.

    def get_delivery_copy(self) -> DeliveryCopy:
        return self.delivery_copy or DeliveryCopy.objects.get_default()

    def get_link_lifetime(self) -> timedelta:
        if self.link_lifetime_hours:
            return timedelta(hours=self.link_lifetime_hours)
        return app_settings.link_lifetime

    def get_download_limit(self) -> int | None:
        """Downloads allowed per file per link; None means unlimited."""
        if self.download_limit is None:
            return app_settings.DOWNLOAD_LIMIT
        return self.download_limit or None

    # Preview: the page, and the update email as a buyer would read it (unsaved edits included).

    @property
    def preview_modes(self) -> list[tuple[str, Any]]:
        return [*super().preview_modes, (UPDATE_EMAIL_PREVIEW, _("Update email"))]  # type: ignore[misc]

    def serve_preview(self, request: Any, mode_name: str) -> Any:
        if mode_name == UPDATE_EMAIL_PREVIEW:
            from ..updates import preview_update_email  # Wagtail's preview API; it reads models

            return preview_update_email(self, request)
        return super().serve_preview(request, mode_name)  # type: ignore[misc]

    def get_template(self, request: Any, *args: Any, **kwargs: Any) -> list[str]:
        # The page's own template first (a site may override it), then ours.
        own = super().get_template(request, *args, **kwargs)  # type: ignore[misc]
        return [own, DEFAULT_TEMPLATE] if own != DEFAULT_TEMPLATE else [own]


class AbstractProductFile(Orderable):
    """One private file of a product. Subclasses add ``page = ParentalKey(...)``."""

    title = models.CharField(_("title"), max_length=255)
    file = models.FileField(
        _("file"),
        storage=get_product_storage,
        upload_to=product_file_upload_to,
        max_length=500,
    )
    size = models.BigIntegerField(_("size in bytes"), default=0, editable=False)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True, editable=False)
    #: The CRC-32 a ZIP entry records: with the size, what lets "Download all" lay out its
    #: archive before reading a byte (``serving.archive``). Empty: not measured yet.
    crc32 = models.BigIntegerField(_("CRC-32"), null=True, blank=True, editable=False)
    #: The notes of the current upload; published with a new upload, they become its version's.
    release_notes = models.TextField(
        _("what changed in this version"),
        blank=True,
        help_text=_(
            "Shown to buyers with this upload. When you replace the file, write what changed; "
            "the notes are stored with the new version when the page is published."
        ),
    )

    panels = [
        FieldPanel("title"),
        FieldPanel("file"),
        FieldPanel("release_notes"),
        FieldRowPanel([FieldPanel("size", read_only=True), FieldPanel("sha256", read_only=True)]),
    ]

    class Meta(Orderable.Meta):
        abstract = True
        verbose_name = _("product file")
        verbose_name_plural = _("product files")

    def __str__(self) -> str:
        return self.title

    @property
    def size_display(self) -> str:
        return filesizeformat(self.size)

    @property
    def filename(self) -> str:
        return (self.file.name or "").rsplit("/", 1)[-1]

    @property
    def type_label(self) -> str:
        """The stored file's type as buyers know it ("PDF", "ZIP", "WAV"); "" when unknown.

        From the stored name (what the upload was called, as its download is named), never
        from the title an editor typed, and without opening the file on a page view.
        """
        return file_type_label(self.filename)

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Size and checksum (the file's ETag) always describe the stored file: a new upload is
        # measured as it is written; a file that is not the one this row names (an upload
        # replaced in the editor and published, now or on schedule) is measured from storage,
        # because modelcluster's revision save committed it before we could see it was new.
        if getattr(self, "served_version", None) is not None:
            # A copy standing for an older version while it is served (``versions``): saving it
            # would point the product at old bytes.
            raise TypeError("A served version of a product file is never saved.")
        new_upload = bool(self.file) and (
            not self._upload_committed() or self.pk is None or self._names_another_file()
        )
        if self.file and (not self._upload_committed() or self._names_another_file()):
            self.size, self.sha256, self.crc32 = measure(self.file)
        super().save(*args, **kwargs)
        if self.file:
            # Every upload this row ever named is a version buyers may be entitled to.
            FileVersion.objects.record(self, new_upload=new_upload)

    def serializable_data(self) -> dict[str, Any]:
        """What a page revision stores for this file (modelcluster calls it for child objects).

        Serialising commits a new upload to storage; measuring first gives a draft or a scheduled
        revision the new file's facts.
        """
        if self.file and not self._upload_committed():
            self.size, self.sha256, self.crc32 = measure(self.file)
        return get_serializable_data_for_fields(self)

    def _upload_committed(self) -> bool:
        return bool(getattr(self.file, "_committed", True))

    def _names_another_file(self) -> bool:
        if self.pk is None:
            # A new row for a file already in storage: measured unless its facts came with it.
            return not self.size and not self.sha256
        stored = type(self)._default_manager.filter(pk=self.pk).values_list("file", flat=True)
        return stored.first() != self.file.name


def file_type_label(name: str) -> str:
    """A short type label for a file name, through its media type: "report.Pdf" gives "PDF".

    ``mimetypes`` maps the name to a media type and that type back to its usual extension, so
    variants agree (".jpeg" and ".jpg" both give "JPG"); a name it does not know gives "".
    """
    media_type, _encoding = mimetypes.guess_type(name, strict=False)
    if media_type is None:
        return ""
    extension = mimetypes.guess_extension(media_type, strict=False) or ""
    return extension.lstrip(".").upper()


def measure(field_file: Any) -> tuple[int, str, int | None]:
    """Size, SHA-256 and CRC-32 of a new upload (read from where it is now) or of a stored
    file, in one pass. Also used by the migration that measured files stored before CRC-32s."""
    digest = hashlib.sha256()
    crc = 0
    size = 0
    if getattr(field_file, "_committed", True):
        try:
            with field_file.storage.open(field_file.name, "rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(chunk)
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
        except storage_errors() as error:
            # Unknown rather than wrong: serving then takes size and ETag from the storage.
            logger.warning("Product file %s could not be measured: %s", field_file.name, error)
            return 0, "", None
        return size, digest.hexdigest(), crc
    field_file.seek(0)
    for chunk in field_file.chunks():
        digest.update(chunk)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
    field_file.seek(0)
    return size, digest.hexdigest(), crc


def backfill_crc32(file_model: Any) -> None:
    """Measure every file of ``file_model`` (a migration's historical product file model) that
    has no CRC-32 yet, from storage. A file missing from storage keeps none and is measured when
    "Download all" first needs it (``serving.archive``)."""
    for row in file_model._default_manager.filter(crc32__isnull=True).exclude(file=""):
        size, sha256, crc = measure(row.file)
        if crc is not None:
            file_model._default_manager.filter(pk=row.pk).update(
                size=size, sha256=sha256, crc32=crc
            )


def product_file_models() -> list[type[AbstractProductFile]]:
    """Every concrete product file model installed (the bundled one, or a site's own)."""
    return [
        model
        for model in apps.get_models()
        if issubclass(model, AbstractProductFile) and not model._meta.abstract
    ]


def product_page_models() -> list[type[ProductPageMixin]]:
    """Every concrete product page model installed (the bundled one, or a site's own)."""
    return [
        model
        for model in apps.get_models()
        if issubclass(model, ProductPageMixin) and not model._meta.abstract
    ]


def live_product_page(page_id: Any) -> Any:
    """The live product page ``page_id`` as its specific type (a Page and a ProductPageMixin), or
    None (not a product, not live, not a number)."""
    try:
        pk = int(page_id)
    except (TypeError, ValueError):
        return None
    page_model = swapper.load_model("wagtailcore", "Page")
    page = page_model.objects.live().filter(pk=pk).specific().first()
    return page if isinstance(page, ProductPageMixin) else None
