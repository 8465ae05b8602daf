"""The settings object: defaults, refusal of unknown keys, reloading under override_settings."""

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from wagtail_paid_delivery.conf import DEFAULTS, app_settings


def test_every_key_has_its_documented_default_when_nothing_is_set():
    with override_settings(WAGTAIL_PAID_DELIVERY={}):
        assert app_settings.STRIPE_SECRET_KEY == ""
        assert app_settings.STRIPE_WEBHOOK_SECRETS == []
        assert app_settings.STRIPE_API_BASE is None
        assert app_settings.WEBHOOK_TOLERANCE == 300
        assert app_settings.link_lifetime == timedelta(hours=24)
        assert app_settings.DOWNLOAD_LIMIT == 5
        assert app_settings.INSTALLATION_ID is None
        assert app_settings.STORAGE == "wagtail_paid_delivery.storage.PrivateProductStorage"
        for key, default in DEFAULTS.items():
            assert getattr(app_settings, key) == default


def test_a_site_without_the_setting_at_all_gets_the_defaults(settings):
    del settings.WAGTAIL_PAID_DELIVERY
    assert app_settings.DOWNLOAD_LIMIT == 5
    assert app_settings.webhook_secrets == []


def test_unknown_key_raises_improperly_configured_naming_the_key():
    with (
        override_settings(WAGTAIL_PAID_DELIVERY={"DOWNLOAD_LIMT": 3}),
        pytest.raises(ImproperlyConfigured, match="DOWNLOAD_LIMT"),
    ):
        app_settings.DOWNLOAD_LIMIT  # noqa: B018


def test_setting_that_is_not_a_dict_is_refused():
    with (
        override_settings(WAGTAIL_PAID_DELIVERY=["STRIPE_SECRET_KEY"]),
        pytest.raises(ImproperlyConfigured, match="must be a dict"),
    ):
        app_settings.STRIPE_SECRET_KEY  # noqa: B018


def test_reading_a_key_that_does_not_exist_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NOPE"):
        app_settings.NOPE  # noqa: B018


def test_values_reload_when_override_settings_changes_them():
    assert app_settings.DOWNLOAD_LIMIT == 5  # cached from tests.settings
    with override_settings(WAGTAIL_PAID_DELIVERY={"DOWNLOAD_LIMIT": 2}):
        assert app_settings.DOWNLOAD_LIMIT == 2
    assert app_settings.DOWNLOAD_LIMIT == 5


def test_webhook_secrets_is_a_list_without_blanks_and_accepts_a_single_string():
    with override_settings(
        WAGTAIL_PAID_DELIVERY={"STRIPE_WEBHOOK_SECRETS": ["whsec_a", "", "whsec_b"]}
    ):
        assert app_settings.webhook_secrets == ["whsec_a", "whsec_b"]
    with override_settings(WAGTAIL_PAID_DELIVERY={"STRIPE_WEBHOOK_SECRETS": "whsec_only"}):
        assert app_settings.webhook_secrets == ["whsec_only"]
    with override_settings(WAGTAIL_PAID_DELIVERY={}):
        assert app_settings.webhook_secrets == []


def test_installation_id_is_the_configured_value():
    with override_settings(WAGTAIL_PAID_DELIVERY={"INSTALLATION_ID": "shop-eu"}):
        assert app_settings.installation_id == "shop-eu"


def test_installation_id_is_derived_from_secret_key_and_stable():
    with override_settings(WAGTAIL_PAID_DELIVERY={}, SECRET_KEY="site-one"):
        first = app_settings.installation_id
        app_settings.reload()
        assert app_settings.installation_id == first
        assert len(first) == 16 and int(first, 16) >= 0
        assert "site-one" not in first
    with override_settings(WAGTAIL_PAID_DELIVERY={}, SECRET_KEY="site-two"):
        assert app_settings.installation_id != first
    with override_settings(WAGTAIL_PAID_DELIVERY={}, SECRET_KEY="site-one"):
        assert app_settings.installation_id == first


def test_link_lifetime_accepts_seconds_as_well_as_a_timedelta():
    with override_settings(WAGTAIL_PAID_DELIVERY={"LINK_LIFETIME": 3600}):
        assert app_settings.link_lifetime == timedelta(hours=1)
    with override_settings(WAGTAIL_PAID_DELIVERY={"LINK_LIFETIME": timedelta(days=2)}):
        assert app_settings.link_lifetime == timedelta(days=2)


def test_missing_secret_key_raises_naming_the_key_to_set():
    with (
        override_settings(WAGTAIL_PAID_DELIVERY={}),
        pytest.raises(ImproperlyConfigured, match=r"WAGTAIL_PAID_DELIVERY\['STRIPE_SECRET_KEY'\]"),
    ):
        app_settings.require_secret_key()
    with override_settings(WAGTAIL_PAID_DELIVERY={"STRIPE_SECRET_KEY": "sk_test_x"}):
        assert app_settings.require_secret_key() == "sk_test_x"
