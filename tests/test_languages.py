"""The buyer's language: chosen at checkout, stored on the purchase, spoken by their emails and
the pages their links open, told to Stripe Checkout; and the shipped catalogues are complete and
compiled."""

from __future__ import annotations

import gettext
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone, translation

from tests.factories import DeliveryCopyFactory, ProductPageFactory
from wagtail_paid_delivery import languages
from wagtail_paid_delivery.models import DeliveryCopy, Purchase

PACKAGE = Path(__file__).resolve().parent.parent / "wagtail_paid_delivery"
LOCALE = PACKAGE / "locale"
TEMPLATES = PACKAGE / "templates" / "wagtail_paid_delivery"
ORIGIN = "http://testserver"

#: Where the words a buyer reads come from: every template outside admin/ but the shop's own
#: new sale notice, and these modules. Their catalogue entries must all be translated.
BUYER_MODULES = {
    "delivery.py",
    "forms.py",
    "library.py",
    "links.py",
    "models/copy.py",
    "payments.py",  # the receipt's note on a charged amount
    "receipt.py",
    "screens.py",
    "times.py",
    "updates.py",  # the update email's release notes
    "views/checkout.py",
}

#: The test settings with LocaleMiddleware, as a site that speaks its buyers' languages has.
WITH_LOCALE_MIDDLEWARE = [
    *settings.MIDDLEWARE[:1],
    "django.middleware.locale.LocaleMiddleware",
    *settings.MIDDLEWARE[1:],
]


def is_buyer_source(reference: str) -> bool:
    if reference.startswith("templates/wagtail_paid_delivery/"):
        name = reference.removeprefix("templates/wagtail_paid_delivery/")
        return not name.startswith("admin/") and name != "email/new_sale.txt"
    return reference in BUYER_MODULES


# Reading a .po file: entries with their references, flags and translations. -------------------

PO_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def unquote(text: str) -> str:
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def read_po(path: Path) -> list[dict]:
    entries: list[dict] = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        entry: dict = {"references": [], "flags": [], "msgstr": []}
        field = None
        for line in block.strip().splitlines():
            if line.startswith("#:"):
                entry["references"] += [ref.split(":")[0] for ref in line[2:].split()]
            elif line.startswith("#,"):
                entry["flags"] += [flag.strip() for flag in line[2:].split(",")]
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                value = unquote(PO_STRING.match(line).group(1))
                if field == "msgstr":
                    entry["msgstr"][-1] += value
                else:
                    entry[field] += value
            else:
                keyword, _, rest = line.partition(" ")
                value = unquote(PO_STRING.match(rest).group(1))
                field = "msgstr" if keyword.startswith("msgstr") else keyword
                if field == "msgstr":
                    entry["msgstr"].append(value)
                else:
                    entry[field] = value
        if entry.get("msgid"):  # the header has an empty msgid
            entries.append(entry)
    return entries


# The catalogues ----------------------------------------------------------------------------------


def test_the_german_catalogue_translates_every_word_a_buyer_reads():
    entries = read_po(LOCALE / "de" / "LC_MESSAGES" / "django.po")
    buyer = [e for e in entries if any(map(is_buyer_source, e["references"]))]
    assert len(buyer) > 150  # the templates and modules above, not an empty match
    untranslated = [e["msgid"] for e in buyer if not all(e["msgstr"])]
    fuzzy = [e["msgid"] for e in buyer if "fuzzy" in e["flags"]]
    assert untranslated == []
    assert fuzzy == []
    # A translation keeps the placeholders its original has, or the page would raise or lie.
    # (A plural's singular may leave its count out: "in einer Minute".)
    for entry in buyer:
        wanted = placeholders(entry["msgid"] + entry.get("msgid_plural", ""))
        for text in entry["msgstr"]:
            if "msgid_plural" in entry:
                assert placeholders(text) <= wanted, entry["msgid"]
            else:
                assert placeholders(text) == wanted, entry["msgid"]


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\(\w+\)[sd]|\{\w+\}", text))


def test_the_template_lists_every_message_the_german_catalogue_has():
    # A stale django.pot (code changed, makemessages not run) shows here.
    def messages(path: Path) -> set[tuple[str, str | None]]:
        return {(e["msgid"], e.get("msgctxt")) for e in read_po(path)}

    assert messages(LOCALE / "django.pot") == messages(LOCALE / "de" / "LC_MESSAGES" / "django.po")


def test_the_compiled_catalogue_matches_its_source(tmp_path):
    msgfmt = shutil.which("msgfmt")
    if msgfmt is None:
        pytest.skip("msgfmt (Debian's gettext package) is not installed")
    for po in LOCALE.glob("*/LC_MESSAGES/django.po"):
        fresh = tmp_path / "django.mo"
        subprocess.run([msgfmt, "--check", "-o", str(fresh), str(po)], check=True)  # noqa: S603
        with fresh.open("rb") as new, po.with_suffix(".mo").open("rb") as shipped:
            expected = gettext.GNUTranslations(new)._catalog  # type: ignore[attr-defined]
            actual = gettext.GNUTranslations(shipped)._catalog  # type: ignore[attr-defined]
        assert actual == expected, f"{po.with_suffix('.mo')} is stale: run compilemessages"


UNTRANSLATED_TEXT = re.compile(r"[A-Za-z]{2,}")
NOT_WORDS = re.compile(
    r"{% comment %}.*?{% endcomment %}|{% blocktranslate.*?{% endblocktranslate %}|{#.*?#}"
    r"|{% block \w+_class %}.*?{% endblock %}"
    r"|<(script|style)\b.*?</\1>|{%.*?%}|{{.*?}}|<[^>]*>",
    re.S,
)
#: Text that is the same in every language.
SAME_IN_EVERY_LANGUAGE = {"SHA-256"}


def test_buyer_templates_have_no_words_outside_a_translation_tag():
    found = []
    for path in sorted(TEMPLATES.rglob("*")):
        name = path.relative_to(TEMPLATES).as_posix()
        if not path.is_file() or not is_buyer_source(f"templates/wagtail_paid_delivery/{name}"):
            continue
        text = NOT_WORDS.sub(" ", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            if UNTRANSLATED_TEXT.search(line) and line.strip() not in SAME_IN_EVERY_LANGUAGE:
                found.append(f"{name}: {line.strip()}")
    assert found == []


# Stripe's locale ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "locale"),
    [
        ("de", "de"),
        ("de-at", "de"),
        ("pt-br", "pt-BR"),
        ("pt", "pt"),
        ("fr-ca", "fr-CA"),
        ("en-gb", "en-GB"),
        ("zh-hans", "zh"),
        ("zh-hant", "zh-TW"),
        ("nb", "nb"),
        ("no", "nb"),
        ("ga", None),  # Irish: Django speaks it, Stripe Checkout does not
        ("", None),
        (None, None),
    ],
)
def test_stripe_is_told_the_languages_it_speaks(language, locale):
    assert languages.stripe_locale(language) == locale


# A buyer's purchase, through the real URLs -------------------------------------------------------


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


def buy(client, product, accept_language):
    with override_settings(MIDDLEWARE=WITH_LOCALE_MIDDLEWARE):
        response = client.post(
            reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
            HTTP_ORIGIN=ORIGIN,
            HTTP_ACCEPT_LANGUAGE=accept_language,
        )
    assert response.status_code == 303
    return Purchase.objects.latest("created_at")


def session_params(fake_stripe):
    [call] = fake_stripe.calls("post", "/v1/checkout/sessions")
    return call.params


def pay_and_return(client, fake_stripe, purchase, capture):
    fake_stripe.pay(purchase.stripe_checkout_session_id, email="ada@example.com")
    with capture(execute=True):
        return client.get(
            reverse("wagtail_paid_delivery:success"),
            {"session_id": purchase.stripe_checkout_session_id},
        )


def emailed_url(message, label):
    return message.body.split(f"{label}\n")[1].split("\n")[0].replace(ORIGIN, "")


@pytest.mark.django_db
def test_a_german_buyer_pays_reads_and_downloads_in_german(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, "de-DE,de;q=0.9,en;q=0.5")

    assert purchase.language == "de"
    assert session_params(fake_stripe)["locale"] == "de"
    assert fake_stripe.sessions[purchase.stripe_checkout_session_id]["locale"] == "de"

    # The success page speaks German even to a request that asks for nothing in particular.
    thanks = pay_and_return(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    html = thanks.content.decode()
    assert thanks["Content-Language"] == "de"
    assert '<html lang="de">' in html
    assert "Vielen Dank für Ihren Kauf" in html
    assert "Ihre Zahlung für Field guide ist bestätigt." in html
    assert "Zu Ihren Downloads" in html
    assert "Thank you" not in html

    # The delivery email, sent by the outbox outside any request, is in German.
    [message] = mail.outbox
    assert message.subject == "Ihr Download: Field guide"
    assert "Vielen Dank, dass Sie Field guide gekauft haben." in message.body
    assert "Bestellnummer" in message.body  # the receipt too
    html_part, _ = message.alternatives[0]
    assert '<html lang="de">' in html_part and "Ihre Dateien herunterladen" in html_part

    # The link opens the download page in German in any browser, whatever it asks for.
    other_browser = Client(HTTP_ACCEPT_LANGUAGE="en")
    page = other_browser.get(emailed_url(message, "Ihre Dateien herunterladen:"))
    assert page.status_code == 200
    assert page["Content-Language"] == "de"
    body = page.content.decode()
    assert "Hier sind Ihre Dateien für Field guide." in body
    assert ">Herunterladen<" in body
    assert "noch 5 Downloads" in body
    assert "Here are your files" not in body

    # After the request, the thread speaks the site's language again.
    assert translation.get_language() == settings.LANGUAGE_CODE


@pytest.mark.django_db
def test_a_refused_link_page_speaks_the_buyers_language(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, "de")
    pay_and_return(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    url = emailed_url(mail.outbox[0], "Ihre Dateien herunterladen:")
    purchase.links.update(revoked_at=timezone.now())
    page = Client().get(url)
    assert page.status_code == 410
    assert "Dieser Download-Link ist nicht mehr gültig." in page.content.decode()


@pytest.mark.django_db
def test_a_language_stripe_does_not_speak_falls_back(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, "ga")  # Irish: the site speaks it, Stripe does not
    assert purchase.language == "ga"
    assert "locale" not in session_params(fake_stripe)
    # Nor does the app: its words fall back to the built-in English ones.
    pay_and_return(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    assert mail.outbox[0].subject == "Your download: Field guide"


@pytest.mark.django_db
def test_an_unsupported_language_keeps_the_configured_checkout_locale(client, product, fake_stripe):
    options = {"locale": "auto"}
    with override_settings(
        WAGTAIL_PAID_DELIVERY={**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_OPTIONS": options}
    ):
        buy(client, product, "ga")
    assert session_params(fake_stripe)["locale"] == "auto"


@pytest.mark.django_db
def test_a_site_that_chose_one_checkout_language_keeps_it(client, product, fake_stripe):
    options = {"locale": "fr"}
    with override_settings(
        WAGTAIL_PAID_DELIVERY={**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_OPTIONS": options}
    ):
        purchase = buy(client, product, "de")
    assert purchase.language == "de"  # the emails still speak German
    assert session_params(fake_stripe)["locale"] == "fr"


@pytest.mark.django_db
def test_a_brazilian_buyer_gets_stripes_brazilian_portuguese(client, product, fake_stripe):
    purchase = buy(client, product, "pt-BR,pt;q=0.8")
    assert purchase.language == "pt-br"
    assert session_params(fake_stripe)["locale"] == "pt-BR"


@pytest.mark.django_db
def test_without_locale_middleware_nothing_is_chosen(client, product, fake_stripe):
    # A site that does not pick languages per request: no language stored, Stripe as configured.
    response = client.post(
        reverse("wagtail_paid_delivery:checkout", args=[product.pk]),
        HTTP_ORIGIN=ORIGIN,
        HTTP_ACCEPT_LANGUAGE="de",
    )
    assert response.status_code == 303
    assert Purchase.objects.get().language == ""
    assert "locale" not in session_params(fake_stripe)


@pytest.mark.django_db
def test_a_language_the_site_no_longer_offers_is_not_spoken(
    client, product, fake_stripe, django_capture_on_commit_callbacks
):
    purchase = buy(client, product, "de")
    with override_settings(LANGUAGES=[("en", "English")]):
        pay_and_return(client, fake_stripe, purchase, django_capture_on_commit_callbacks)
    assert mail.outbox[0].subject == "Your download: Field guide"


# DeliveryCopy ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_built_in_copy_follows_the_language_and_an_editors_words_stay_theirs():
    default = DeliveryCopy.objects.get_default()
    edited = DeliveryCopyFactory(success_title="Danke schön, merci, thank you")
    # An editor who saved the built-in text through the admin form (a textarea sends CRLF).
    resaved = DeliveryCopyFactory(
        email_body=str(DeliveryCopy._meta.get_field("email_body").default).replace("\n", "\r\n")
    )
    with translation.override("de"):
        assert default.render_text("success_title") == "Vielen Dank für Ihren Kauf"
        assert edited.render_text("success_title") == "Danke schön, merci, thank you"
        assert resaved.render_text("email_body", product="X").startswith("Vielen Dank, dass Sie X")
    with translation.override("en"):
        assert default.render_text("success_title") == "Thank you for your purchase"


@pytest.mark.django_db
def test_a_translated_copy_speaks_to_the_buyers_of_its_language(
    client, home, fake_stripe, django_capture_on_commit_callbacks
):
    english = DeliveryCopyFactory(email_subject="Yours: {product}")
    DeliveryCopyFactory(translation_of=english, language="de", email_subject="Für Sie: {product}")
    product = ProductPageFactory(parent=home, title="Atlas", delivery_copy=english)

    german = buy(client, product, "de-AT,de;q=0.9")  # Austrian German finds "de"
    pay_and_return(client, fake_stripe, german, django_capture_on_commit_callbacks)
    english_browser = Client()
    english_buyer = buy(english_browser, product, "en")
    pay_and_return(english_browser, fake_stripe, english_buyer, django_capture_on_commit_callbacks)

    assert german.language == "de"  # LocaleMiddleware: the nearest language the site offers
    assert sorted(message.subject for message in mail.outbox) == ["Für Sie: Atlas", "Yours: Atlas"]


@pytest.mark.django_db
def test_a_regional_language_finds_its_languages_translation():
    original = DeliveryCopyFactory()
    german = DeliveryCopyFactory(translation_of=original, language="de")
    swiss = DeliveryCopyFactory(translation_of=original, language="de-ch")
    assert original.in_language("de-at") == german
    assert original.in_language("de-CH") == swiss
    assert original.in_language("fr") == original
    assert original.in_language("") == original
    assert german.in_language("de-ch") == german  # a translation is not translated further


@pytest.mark.django_db
def test_a_translation_must_name_its_language_and_cannot_be_the_default():
    original = DeliveryCopyFactory()
    with pytest.raises(ValidationError) as raised:
        DeliveryCopy(name="Deutsch", translation_of=original, is_default=True).full_clean()
    assert set(raised.value.message_dict) >= {"language", "is_default"}
    with pytest.raises(ValidationError) as raised:
        DeliveryCopy(name="Klingon", translation_of=original, language="tlh").full_clean()
    assert "language" in raised.value.message_dict
    german = DeliveryCopyFactory(translation_of=original, language="de")
    with pytest.raises(ValidationError) as raised:
        DeliveryCopy(name="Schweiz", translation_of=german, language="de-ch").full_clean()
    assert "translation_of" in raised.value.message_dict
