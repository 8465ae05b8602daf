"""DeliveryCopy: every word a buyer reads, written by editors in the Wagtail admin."""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import translation
from django.utils.functional import Promise
from django.utils.html import conditional_escape, escape, linebreaks, urlize
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _
from wagtail.models import PreviewableMixin

#: Placeholders editors may use in any copy field, with what they stand for.
PLACEHOLDERS: dict[str, Any] = {
    "product": _("the product's title"),
    "email": _("the buyer's email address"),
    "expires": _("when the download link expires"),
    "downloads_left": _("how many downloads are left per file"),
}
PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")
PLACEHOLDER_HELP = _("You may use {product}, {email}, {expires} and {downloads_left}.")


def fill_placeholders(text: str, values: Mapping[str, Any], *, html: bool = True) -> str:
    """Replace ``{name}`` placeholders in editor text, escaping both the text and the values.

    Editor text is never treated as a template, so it cannot reach template tags, attributes or
    Python objects; unknown names are left exactly as written. A value that is already HTML
    (``__html__``: the app's own, such as ``times.Moment``'s ``<time>`` element) is kept as such
    in ``html`` mode; every other value is escaped.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in PLACEHOLDERS or name not in values:
            return match.group(0)
        value = values[name]
        return conditional_escape(value) if html else str(value)

    if not html:
        return PLACEHOLDER_RE.sub(replace, str(text))
    # Escape the editor's text first, then fill escaped values in: nothing they type becomes HTML.
    return PLACEHOLDER_RE.sub(replace, str(escape(text)))


def render_paragraphs(text: str, values: Mapping[str, Any]) -> SafeString:
    """Editor text as safe HTML paragraphs, placeholders filled."""
    filled = fill_placeholders(text, values, html=True)
    # linebreaks() escapes unless told the text is already safe: it is, we escaped it above.
    return mark_safe(linebreaks(filled, autoescape=False))  # noqa: S308


def validate_placeholders(value: str) -> None:
    unknown = sorted({n for n in PLACEHOLDER_RE.findall(value or "") if n not in PLACEHOLDERS})
    if unknown:
        raise ValidationError(
            _("Unknown placeholder(s): %(names)s. %(help)s"),
            params={"names": ", ".join(f"{{{n}}}" for n in unknown), "help": PLACEHOLDER_HELP},
            code="unknown_placeholder",
        )


def validate_language(value: str) -> None:
    # Checked when saved, not as model choices: LANGUAGES is the site's, not a migration's.
    if value and value not in {code for code, _name in settings.LANGUAGES}:
        raise ValidationError(
            _("%(code)s is not one of the site's LANGUAGES."),
            params={"code": value},
            code="unknown_language",
        )


def _copy_field(verbose_name: Any, default: Any, *, short: bool = False) -> models.Field:
    if short:
        return models.CharField(
            verbose_name,
            max_length=255,
            default=default,
            validators=[validate_placeholders],
            help_text=PLACEHOLDER_HELP,
        )
    return models.TextField(
        verbose_name,
        default=default,
        validators=[validate_placeholders],
        help_text=PLACEHOLDER_HELP,
    )


class DeliveryCopyQuerySet(models.QuerySet["DeliveryCopy"]):
    def get_default(self) -> DeliveryCopy:
        """The site default copy; created with the built-in words if a site has none."""
        copy: DeliveryCopy | None = self.filter(is_default=True).order_by("pk").first()
        if copy is None:
            copy = self.order_by("pk").first() or self.create(
                name=str(_("Default delivery copy")), is_default=True
            )
        return copy


class DeliveryCopy(PreviewableMixin, models.Model):
    """The words on the success, download and resend pages and in the delivery email.

    Previewable in the admin: one preview mode per buyer screen (``screens.PREVIEW_MODES``).
    """

    name = models.CharField(_("name"), max_length=255, unique=True)
    is_default = models.BooleanField(
        _("site default"),
        default=False,
        help_text=_("Used for every product that does not choose its own copy."),
    )
    contact_line = models.CharField(
        _("contact line"),
        max_length=500,
        blank=True,
        help_text=_(
            'Shown at the foot of every buyer page: how to reach the shop, e.g. "Questions '
            'about your order? Write to help@example.com." Email addresses and web addresses '
            "become links. Empty: a line with the site's DEFAULT_FROM_EMAIL address."
        ),
    )

    #: Translations: a copy for one language, linked to the copy it translates (the site default
    #: or a product's). ``delivery.copy_for`` picks it for a buyer who speaks that language.
    translation_of = models.ForeignKey(
        "self",
        verbose_name=_("translation of"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="translations",
        help_text=_(
            "Leave empty for a copy of its own. Choose a copy to make this one its translation: "
            "buyers who speak the language below then read this one instead."
        ),
    )
    language = models.CharField(
        _("language"),
        max_length=35,
        blank=True,
        validators=[validate_language],
        help_text=_("For a translation: a language code from the site's LANGUAGES, e.g. de."),
    )

    checkout_unavailable_title = _copy_field(
        _("checkout unavailable: title"), _("Checkout is unavailable right now"), short=True
    )
    checkout_unavailable_message = _copy_field(
        _("checkout unavailable: message"),
        _(
            "We could not start the payment for {product}. You have not been charged. "
            "Please try again in a few minutes."
        ),
    )
    success_title = _copy_field(_("success: title"), _("Thank you for your purchase"), short=True)
    success_message = _copy_field(
        _("success: message"),
        _(
            "Your payment for {product} is confirmed. Your download is ready below, and we "
            "have sent a link to {email} as well."
        ),
    )
    pending_title = _copy_field(_("pending: title"), _("Your payment is processing"), short=True)
    pending_message = _copy_field(
        _("pending: message"),
        _(
            "We are waiting for your bank to confirm the payment for {product}. As soon as it "
            "does, we will email your download link to {email}; if the payment fails, we will "
            "email you too. You can close this page."
        ),
    )
    failed_title = _copy_field(_("failed: title"), _("The payment did not go through"), short=True)
    failed_message = _copy_field(
        _("failed: message"),
        _("Your payment for {product} failed and you have not been charged. Please try again."),
    )
    neutral_title = _copy_field(_("neutral: title"), _("Check your email"), short=True)
    neutral_message = _copy_field(
        _("neutral: message"),
        _(
            "If you completed a purchase, we email your download link to the address you paid "
            "with as soon as the payment is confirmed. It can take a minute to arrive; please "
            "check your spam folder too."
        ),
    )
    email_subject = _copy_field(
        _("delivery email: subject"), _("Your download: {product}"), short=True
    )
    email_body = _copy_field(
        _("delivery email: body"),
        _(
            "Thank you for buying {product}.\n\n"
            "Use the button below to download your files. The link works until {expires}, "
            "for {downloads_left} downloads per file. If it expires, you can ask for a new one "
            "at any time."
        ),
    )
    download_intro = _copy_field(
        _("download page: introduction"),
        _(
            "Here are your files for {product}. This link works until {expires}; "
            "each file can be downloaded {downloads_left} more times."
        ),
    )
    expired_message = _copy_field(
        _("expired link: message"),
        _("This download link has expired. Enter your email address to get a fresh one."),
    )
    used_up_message = _copy_field(
        _("used-up link: message"),
        _("This link has reached its download limit. Enter your email address to get a fresh one."),
    )
    revoked_message = _copy_field(
        _("revoked link: message"),
        _(
            "This download link is no longer valid. If you think this is a mistake, please "
            "contact us."
        ),
    )
    resend_intro = _copy_field(
        _("resend form: introduction"),
        _(
            "Lost your download link? Enter the email address you paid with and we will send "
            "you fresh links."
        ),
    )
    resend_confirmation = _copy_field(
        _("resend form: confirmation"),
        _(
            "If that address has a purchase that can still be downloaded, we are sending it "
            "fresh links; please check your inbox and spam folder. Refunded or cancelled "
            "purchases get no links: if nothing arrives, please contact the shop."
        ),
    )
    resend_sent = _copy_field(
        _("resend from a link page: confirmation"),
        _(
            "Fresh download links for {product} are on their way to {email}. Please check "
            "your inbox and spam folder."
        ),
    )
    resend_email_subject = _copy_field(
        _("resend email: subject"), _("Fresh download links for {product}"), short=True
    )
    resend_email_intro = _copy_field(
        _("resend email: introduction"),
        _(
            "You asked for fresh download links. Here they are; older links keep working "
            "until they expire."
        ),
    )

    # Purchases that no longer give access: on the success page (title and message) and on a
    # download link's page (message), each told apart; no link is offered in any of them.
    refunded_title = _copy_field(_("refunded: title"), _("This purchase was refunded"), short=True)
    refunded_message = _copy_field(
        _("refunded: message"),
        _(
            "Your payment for {product} was refunded, so its download links no longer work "
            "and no new ones will be sent. If you have a question, please contact the shop."
        ),
    )
    shop_revoked_title = _copy_field(
        _("revoked by the shop: title"), _("Access to this purchase was withdrawn"), short=True
    )
    shop_revoked_message = _copy_field(
        _("revoked by the shop: message"),
        _(
            "The shop has withdrawn access to {product}, so its download links no longer work "
            "and no new ones will be sent. If you think this is a mistake, please contact the "
            "shop."
        ),
    )
    suspended_title = _copy_field(
        _("suspended during a dispute: title"), _("Downloads are paused"), short=True
    )
    suspended_message = _copy_field(
        _("suspended during a dispute: message"),
        _(
            "The payment for {product} is being disputed with your bank, so downloads are "
            "paused until the dispute is settled. If the payment stands, your links work "
            "again without anything to do. If you have a question, please contact the shop."
        ),
    )
    payment_failed_email_subject = _copy_field(
        _("failed payment email: subject"),
        _("Your payment for {product} did not go through"),
        short=True,
    )
    payment_failed_email_body = _copy_field(
        _("failed payment email: body"),
        _(
            "Your bank did not complete the payment for {product}, so you have not been "
            "charged and no download was sent to {email}. You can try again with another "
            "payment method from the product page."
        ),
    )

    objects = DeliveryCopyQuerySet.as_manager()

    class Meta:
        verbose_name = _("delivery copy")
        verbose_name_plural = _("delivery copy")
        ordering = ["-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="wagtail_paid_delivery_one_default_copy",
            ),
            models.UniqueConstraint(
                fields=["translation_of", "language"],
                condition=models.Q(translation_of__isnull=False),
                name="wagtail_paid_delivery_one_translation_per_language",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Marking a copy as default takes the mark from the previous one, atomically.
        with transaction.atomic():
            if self.is_default:
                DeliveryCopy.objects.filter(is_default=True).exclude(pk=self.pk).update(
                    is_default=False
                )
            super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        if self.translation_of_id is None:
            return
        errors: dict[str, Any] = {}
        if not self.language:
            errors["language"] = _("A translation needs its language.")
        if self.is_default:
            errors["is_default"] = _("A translation is used through the copy it translates.")
        original = self.translation_of
        if original is not None and (original.translation_of_id or original.pk == self.pk):
            errors["translation_of"] = _("Choose a copy that is not itself a translation.")
        if errors:
            raise ValidationError(errors)

    def in_language(self, language: str | None) -> DeliveryCopy:
        """This copy's translation into ``language`` (the exact code, else the language alone:
        "de-at" finds "de"), or this copy when it has none."""
        if not language or self.translation_of_id is not None:
            return self
        code = language.lower()
        wanted = [code, code.split("-")[0]]
        # A copy of its own is written in the site's language: no query for its buyers.
        if wanted[1] == settings.LANGUAGE_CODE.lower().split("-")[0]:
            return self
        found = {c.language.lower(): c for c in self.translations.filter(language__in=wanted)}
        return next((found[w] for w in wanted if w in found), self)

    def validate_constraints(self, exclude: Any = None) -> None:
        # save() takes the default mark from the previous default, so the one-default constraint
        # must not refuse the admin form that moves it (it still guards the database).
        exclude = set(exclude or ())
        if self.is_default:
            exclude.add("is_default")
        super().validate_constraints(exclude=exclude)

    # Preview -------------------------------------------------------------------------------

    @property
    def preview_modes(self) -> list[tuple[str, Any]]:
        from ..screens import PREVIEW_MODES  # Wagtail's preview API; screens imports models

        return PREVIEW_MODES

    def serve_preview(self, request: Any, mode_name: str) -> Any:
        from ..screens import preview

        return preview(self, request, mode_name)

    def words(self, field_name: str) -> str:
        """One copy field's text, in the active language while it is the built-in text.

        The built-in words are stored as written in English (the msgid); an editor's own words
        are theirs, in whatever language they wrote them. So a field still holding the built-in
        text is read from the translation catalogue, and a German buyer reads German.
        """
        text = str(getattr(self, field_name))
        default = getattr(self._meta.get_field(field_name), "default", None)
        if not isinstance(default, Promise):
            return text
        with translation.override(None):
            built_in = str(default)
        if text.replace("\r\n", "\n").strip() == built_in.strip():
            return str(default)
        return text

    def render(self, field_name: str, **values: Any) -> SafeString:
        """One copy field as safe HTML paragraphs, with placeholders filled."""
        return render_paragraphs(self.words(field_name), values)

    def render_contact(self) -> SafeString:
        """The contact line as safe HTML, its addresses linked; the default line when empty."""
        text = self.contact_line.strip()
        if not text:
            address = parseaddr(str(settings.DEFAULT_FROM_EMAIL or ""))[1]
            # Django's own default, webmaster@localhost, reaches nobody: say nothing rather.
            if "." not in address.rpartition("@")[2]:
                return mark_safe("")  # noqa: S308 (empty)
            text = str(_("Questions about your order? Write to %(email)s.") % {"email": address})
        # urlize escapes everything that is not an address it links.
        return mark_safe(urlize(text, nofollow=True, autoescape=True))  # noqa: S308

    def render_text(self, field_name: str, **values: Any) -> str:
        """One copy field as plain text (email subject and text part), placeholders filled."""
        return fill_placeholders(self.words(field_name), values, html=False)
