"""Every system check id in wagtail_paid_delivery/checks.py, through Django's own check runner."""

import base64
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.files.storage import FileSystemStorage
from django.test import override_settings

from wagtail_paid_delivery import checks, licenses


def our_ids(*, deploy=False):
    return sorted(
        m.id for m in run_checks(include_deployment_checks=deploy) if m.id.startswith(checks.ID)
    )


def cache_ids(*, deploy=False):
    """Our check ids apart from W030 (the test settings' test-mode key under --deploy)."""
    return [i for i in our_ids(deploy=deploy) if i != "wagtail_paid_delivery.W030"]


def test_the_test_settings_pass_every_check_including_deploy():
    assert our_ids() == []
    # The tests use a test-mode key, which `check --deploy` points out (W030) and nothing else.
    assert our_ids(deploy=True) == ["wagtail_paid_delivery.W030"]


def test_e001_private_storage_root_missing():
    with override_settings(PRIVATE_STORAGE_ROOT=None):
        messages = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E001"]
    assert len(messages) == 1
    assert "PRIVATE_STORAGE_ROOT" in messages[0].msg
    assert messages[0].hint


@pytest.mark.parametrize("public", ["MEDIA_ROOT", "STATIC_ROOT"])
def test_e002_private_storage_root_inside_a_public_folder(tmp_path, public):
    with override_settings(**{public: str(tmp_path), "PRIVATE_STORAGE_ROOT": str(tmp_path / "p")}):
        messages = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E002"]
    assert len(messages) == 1
    assert public in messages[0].msg


def test_e002_also_when_private_root_is_the_public_root(tmp_path):
    with override_settings(MEDIA_ROOT=str(tmp_path), PRIVATE_STORAGE_ROOT=str(tmp_path)):
        assert "wagtail_paid_delivery.E002" in our_ids()


def test_e002_not_raised_for_a_sibling_folder_with_a_common_prefix(tmp_path):
    # /x/media-private is not inside /x/media.
    with override_settings(
        MEDIA_ROOT=str(tmp_path / "media"), PRIVATE_STORAGE_ROOT=str(tmp_path / "media-private")
    ):
        assert our_ids() == []


@pytest.mark.parametrize(
    ("app", "check_id"),
    [("private_storage", "wagtail_paid_delivery.E003"), ("django_q", "wagtail_paid_delivery.E004")],
)
def test_e003_e004_required_apps_missing(monkeypatch, app, check_id):
    # override_settings(INSTALLED_APPS=...) would rebuild the app registry, which Wagtail 8's
    # django-ninja API refuses to do twice in one process ("Router is already mounted"); so the
    # registry is asked the same question with one app hidden instead.
    from django.apps import apps

    real = apps.is_installed
    monkeypatch.setattr(apps, "is_installed", lambda name: name != app and real(name))
    messages = [m for m in run_checks() if m.id.startswith(checks.ID)]
    assert [m.id for m in messages] == [check_id]
    assert app in messages[0].msg
    assert f"'{app}'" in messages[0].hint


def test_e005_q_cluster_without_timeout():
    with override_settings(Q_CLUSTER={"name": "x", "retry": 90}):
        assert our_ids() == ["wagtail_paid_delivery.E005"]


def test_e006_q_cluster_retry_not_greater_than_timeout():
    with override_settings(Q_CLUSTER={"name": "x", "timeout": 60, "retry": 60}):
        assert our_ids() == ["wagtail_paid_delivery.E006"]
    # django-q2's default retry is 60 s, so a longer timeout alone is a mistake too.
    with override_settings(Q_CLUSTER={"name": "x", "timeout": 120}):
        assert our_ids() == ["wagtail_paid_delivery.E006"]


def _with(**values):
    return override_settings(WAGTAIL_PAID_DELIVERY={**settings.WAGTAIL_PAID_DELIVERY, **values})


@pytest.mark.parametrize("tolerance", [0, -5, None])
def test_e007_webhook_tolerance_that_disables_the_replay_check(tolerance):
    with _with(WEBHOOK_TOLERANCE=tolerance):
        assert our_ids() == ["wagtail_paid_delivery.E007"]


@pytest.mark.parametrize("limit", [0, -1, "5", 2.5])
def test_e008_download_limit_that_is_not_a_positive_whole_number(limit):
    with _with(DOWNLOAD_LIMIT=limit):
        assert our_ids() == ["wagtail_paid_delivery.E008"]


def test_download_limit_none_means_unlimited_and_passes():
    with _with(DOWNLOAD_LIMIT=None):
        assert our_ids() == []


def test_e000_unknown_settings_key_is_reported_by_check_not_a_crash():
    with _with(TYPO_KEY=1):
        messages = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E000"]
    assert len(messages) == 1
    assert "TYPO_KEY" in messages[0].msg


def test_e009_product_app_with_a_swapped_base_page():
    # In-process we can only flip the setting, not load a swapped Page (it is read when
    # wagtail.models is imported): tests/test_custom_base_page.py runs the real thing in a
    # subprocess. Here the check function is called directly, because the rest of Django's model
    # checks would rightly complain about a swapped-out Page model that is still installed.
    with override_settings(WAGTAIL_PAGE_MODEL="basepage.BasePage"):
        messages = checks.check_product_app_with_custom_base_page()
    assert [m.id for m in messages] == ["wagtail_paid_delivery.E009"]
    assert "WAGTAIL_PAGE_MODEL" in messages[0].msg
    assert checks.check_product_app_with_custom_base_page() == []


def test_w001_w002_missing_stripe_credentials_are_warnings_in_normal_checks():
    with override_settings(WAGTAIL_PAID_DELIVERY={}):
        messages = [m for m in run_checks() if m.id.startswith(checks.ID)]
    assert sorted(m.id for m in messages) == [
        "wagtail_paid_delivery.W001",
        "wagtail_paid_delivery.W002",
    ]
    assert all(not m.is_serious() for m in messages)
    with _with(STRIPE_WEBHOOK_SECRETS=[]):
        assert our_ids() == ["wagtail_paid_delivery.W002"]
    with _with(STRIPE_SECRET_KEY=""):
        assert our_ids() == ["wagtail_paid_delivery.W001"]


def test_e101_e102_missing_stripe_credentials_are_errors_only_under_deploy():
    with override_settings(WAGTAIL_PAID_DELIVERY={}):
        assert "wagtail_paid_delivery.E101" not in our_ids()
        deploy = [
            m for m in run_checks(include_deployment_checks=True) if m.id.startswith(checks.ID)
        ]
    ids = sorted(m.id for m in deploy)
    assert "wagtail_paid_delivery.E101" in ids and "wagtail_paid_delivery.E102" in ids
    assert all(
        m.is_serious()
        for m in deploy
        if m.id in {"wagtail_paid_delivery.E101", "wagtail_paid_delivery.E102"}
    )
    with _with(STRIPE_WEBHOOK_SECRETS=[""]):
        assert "wagtail_paid_delivery.E102" in our_ids(deploy=True)
        assert "wagtail_paid_delivery.E101" not in our_ids(deploy=True)


def test_every_check_id_in_checks_py_is_covered_here():
    import inspect
    import re
    from pathlib import Path

    source = inspect.getsource(checks)
    ids = set(re.findall(r"\{ID\}\.([EW]\d{3})", source))
    tested = set(re.findall(r"wagtail_paid_delivery\.([EW]\d{3})", Path(__file__).read_text()))
    assert ids and ids <= tested


def _e010(**options):
    with _with(CHECKOUT_OPTIONS=options):
        return [m for m in run_checks() if m.id == "wagtail_paid_delivery.E010"]


def test_valid_checkout_options_pass():
    options = {"allow_promotion_codes": True, "locale": None, "require_terms": True}
    assert _e010(**options, terms_message="Waiver") == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"promo_codes": True}, "unknown option 'promo_codes'"),
        ({"automatic_tax": "yes"}, "'automatic_tax' must be bool"),
        ({"locale": 7}, "'locale' must be str or None"),
        ({"terms_message": "Waiver"}, "needs 'require_terms'"),
        ({"require_terms": True, "terms_message": "x" * 1201}, "1200 characters"),
    ],
)
def test_e010_bad_checkout_options(options, expected):
    [message] = _e010(**options)
    assert expected in message.msg


def test_e010_checkout_options_that_are_not_a_dict():
    with _with(CHECKOUT_OPTIONS=["x"]):
        [message] = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E010"]
    assert "must be a dict" in message.msg


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("PARTIAL_REFUND_POLICY", "refund", "wagtail_paid_delivery.E011"),
        ("DISPUTE_POLICY", "pause", "wagtail_paid_delivery.E013"),
        ("MAX_EVENT_ATTEMPTS", 0, "wagtail_paid_delivery.E014"),
        ("EVENT_RETRY_DELAY", 0, "wagtail_paid_delivery.E015"),
    ],
)
def test_e011_e013_e014_e015_refund_dispute_and_retry_settings(key, value, check_id):
    with _with(**{key: value}):
        assert our_ids() == [check_id]


def test_e011_and_e013_tell_the_refund_and_dispute_policies_apart():
    with _with(PARTIAL_REFUND_POLICY="refund", DISPUTE_POLICY="pause"):
        messages = [m for m in run_checks() if m.id.startswith(checks.ID)]
    by_id = {m.id: m.msg for m in messages}
    assert sorted(by_id) == ["wagtail_paid_delivery.E011", "wagtail_paid_delivery.E013"]
    assert "PARTIAL_REFUND_POLICY" in by_id["wagtail_paid_delivery.E011"]
    assert "DISPUTE_POLICY" in by_id["wagtail_paid_delivery.E013"]


@pytest.mark.parametrize(
    "values",
    [{"EVENT_RETRY_DELAY": "soon"}, {"EVENT_RETRY_MAX_DELAY": [6]}, {"EVENT_RETRY_DELAY": None}],
)
def test_e012_retry_delay_that_is_not_a_duration(values):
    with _with(**values):
        assert our_ids() == ["wagtail_paid_delivery.E012"]


@pytest.mark.parametrize(
    "values",
    [
        {"EVENT_RETRY_DELAY": -60},
        {"EVENT_RETRY_DELAY": timedelta(hours=2), "EVENT_RETRY_MAX_DELAY": timedelta(hours=1)},
    ],
)
def test_e015_retry_delay_not_positive_or_longer_than_the_maximum(values):
    with _with(**values):
        assert our_ids() == ["wagtail_paid_delivery.E015"]


@pytest.mark.parametrize(
    "values, check_id",
    [
        ({"EMAIL_RETRY_DELAY": "soon"}, "wagtail_paid_delivery.E040"),
        ({"EMAIL_RETRY_MAX_DELAY": [1]}, "wagtail_paid_delivery.E040"),
        ({"MAX_EMAIL_ATTEMPTS": 0}, "wagtail_paid_delivery.E041"),
        ({"MAX_EMAIL_ATTEMPTS": "50"}, "wagtail_paid_delivery.E041"),
        ({"EMAIL_RETRY_DELAY": 0}, "wagtail_paid_delivery.E042"),
        (
            {"EMAIL_RETRY_DELAY": timedelta(hours=1), "EMAIL_RETRY_MAX_DELAY": 60},
            "wagtail_paid_delivery.E042",
        ),
    ],
)
def test_e040_e041_e042_email_retry_settings(values, check_id):
    with _with(**values):
        assert our_ids() == [check_id]


@pytest.mark.parametrize("value", ["shop@example.com", ["shop@example.com", "not an address"]])
def test_e043_new_sale_emails_not_a_list_of_addresses(value):
    with _with(NEW_SALE_EMAILS=value):
        assert our_ids() == ["wagtail_paid_delivery.E043"]


def test_every_check_id_in_checks_py_names_one_problem():
    # Sites silence checks by id, so an id must never stand for two problems.
    import inspect
    import re

    ids = re.findall(r"\{ID\}\.([EW]\d{3})", inspect.getsource(checks))
    assert sorted(ids) == sorted(set(ids))


def test_w003_ack_failures_is_recommended_for_deploy():
    with override_settings(Q_CLUSTER={**settings.Q_CLUSTER, "ack_failures": False}):
        assert our_ids() == []
        assert our_ids(deploy=True) == ["wagtail_paid_delivery.W003", "wagtail_paid_delivery.W030"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"SERVE_BACKEND": "lighttpd"}, "wagtail_paid_delivery.E020"),
        (
            {"SERVE_BACKEND": "nginx", "NGINX_INTERNAL_PREFIX": "files"},
            "wagtail_paid_delivery.E021",
        ),
        (
            {
                "SERVE_BACKEND": "s3",
                "PRESIGNED_URL_LIFETIME": 3600,
                "STORAGE": "tests.test_offload.SigningStorage",
            },
            "wagtail_paid_delivery.E022",
        ),
        ({"RESEND_EMAIL_RATE_LIMIT": (0, 60)}, "wagtail_paid_delivery.E023"),
    ],
)
def test_e020_to_e023_delivery_settings(values, expected):
    # More cases in test_offload.py.
    with _with(**values):
        assert our_ids() == [expected]


def test_e080_the_presigned_backend_with_a_storage_that_cannot_presign():
    # More cases (S3Storage with querystring_auth off, a custom domain) in test_object_storage.py.
    with _with(SERVE_BACKEND="s3"):  # the default storage: files on disk, url() never expires
        messages = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E080"]
    assert len(messages) == 1 and messages[0].is_serious()
    assert "takes no 'expire'" in messages[0].msg
    with _with(SERVE_BACKEND="s3", STORAGE="tests.test_offload.SigningStorage"):
        assert "wagtail_paid_delivery.E080" not in our_ids()


class PublicAclStorage(FileSystemStorage):
    """Writes every object public-read, as S3Storage(default_acl="public-read") would."""

    default_acl = "public-read"


def test_e081_a_product_storage_that_writes_public_objects():
    # More cases (S3Storage's default_acl and object_parameters) in test_object_storage.py.
    with _with(STORAGE="tests.test_checks.PublicAclStorage"):
        assert our_ids() == ["wagtail_paid_delivery.E081"]


# The rate limits' cache (E024, E025, W004, W005) and RETENTION (E026) ---------------------------

LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
DUMMY = {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}


@pytest.mark.parametrize("limit", [(0, 600), (30,), "30/10m", (30, 0)])
def test_e023_checkout_rate_limit_that_is_not_requests_and_seconds(limit):
    with _with(CHECKOUT_RATE_LIMIT=limit):
        assert our_ids() == ["wagtail_paid_delivery.E023"]
    with _with(CHECKOUT_RATE_LIMIT=None):
        assert our_ids() == []


def test_w004_rate_limits_in_a_per_process_cache_warn_under_deploy():
    with override_settings(CACHES={**settings.CACHES, "rate_limits": LOCMEM}):
        assert our_ids() == []  # while developing, one runserver process counts right
        [message] = [
            m
            for m in run_checks(include_deployment_checks=True)
            if m.id == "wagtail_paid_delivery.W004"
        ]
        assert "'rate_limits'" in message.msg and "LocMemCache" in message.msg
        assert "RATELIMIT_USE_CACHE" in message.hint
        assert cache_ids(deploy=True) == ["wagtail_paid_delivery.W004"]
    # Django's own default CACHES (a LocMemCache "default") and no RATELIMIT_USE_CACHE:
    with override_settings(CACHES={"default": LOCMEM}):
        del settings.RATELIMIT_USE_CACHE
        assert cache_ids(deploy=True) == ["wagtail_paid_delivery.W004"]


def test_w005_rate_limits_in_a_dummy_cache_count_nothing():
    with override_settings(CACHES={**settings.CACHES, "rate_limits": DUMMY}):
        assert cache_ids(deploy=True) == ["wagtail_paid_delivery.W005"]
        # No limit configured at all: nothing to count, nothing to warn about.
        with _with(
            CHECKOUT_RATE_LIMIT=None,
            RESEND_RATE_LIMIT=None,
            RESEND_EMAIL_RATE_LIMIT=None,
            LIBRARY_RATE_LIMIT=None,
            LIBRARY_EMAIL_RATE_LIMIT=None,
        ):
            assert cache_ids(deploy=True) == []


def test_shared_caches_pass():
    # (Django's own checks instantiate every cache: only backends whose client is installed.)
    for backend in (
        "django.core.cache.backends.redis.RedisCache",
        "django.core.cache.backends.db.DatabaseCache",
    ):
        shared = {"BACKEND": backend, "LOCATION": "somewhere"}
        with override_settings(CACHES={**settings.CACHES, "rate_limits": shared}):
            assert cache_ids(deploy=True) == [], backend


def test_e024_resend_cache_is_accepted_but_may_not_contradict_the_limits_cache():
    with _with(RESEND_CACHE="rate_limits"):
        assert our_ids() == []  # the old key, naming the cache the limits count in: fine
    with _with(RESEND_CACHE="default"):
        [message] = [m for m in run_checks() if m.id == "wagtail_paid_delivery.E024"]
        assert "RATELIMIT_USE_CACHE = 'default'" in message.hint
        assert our_ids() == ["wagtail_paid_delivery.E024"]


def test_e025_rate_limits_cache_that_does_not_exist():
    with override_settings(RATELIMIT_USE_CACHE="nowhere"):
        assert our_ids() == ["wagtail_paid_delivery.E025"]


@pytest.mark.parametrize(
    "retention",
    [
        {"stripe_events": timedelta(days=7)},  # shorter than Stripe's 30 days
        {"download_records": timedelta(hours=1)},
        {"unpaid_purchases": 60},  # seconds
        {"download_records": "180 days"},
        {"downloads": timedelta(days=30)},  # unknown key
        [timedelta(days=30)],
    ],
)
def test_e026_retention_periods(retention):
    with _with(RETENTION=retention):
        assert our_ids() == ["wagtail_paid_delivery.E026"]


def test_retention_may_be_partial_or_keep_forever():
    from wagtail_paid_delivery.conf import app_settings

    with _with(RETENTION={"download_records": None, "stripe_events": 40 * 86400}):
        assert our_ids() == []
        assert app_settings.retention == {
            "download_records": None,
            "stripe_events": timedelta(days=40),
            "unpaid_purchases": timedelta(days=30),
            "emails": timedelta(days=180),
        }


# Stripe key shapes ------------------------------------------------------------------------------


def _messages(check_id, *, deploy=False):
    return [m for m in run_checks(include_deployment_checks=deploy) if m.id == check_id]


@pytest.mark.parametrize("key", ["pk_test_51Habc", "pk_live_51Habc"])
def test_e030_publishable_key_where_the_secret_key_belongs(key):
    with _with(STRIPE_SECRET_KEY=key):
        assert our_ids() == ["wagtail_paid_delivery.E030"]
        [message] = _messages("wagtail_paid_delivery.E030")
    assert message.is_serious()
    assert "publishable" in message.msg
    assert key not in message.msg + message.hint


@pytest.mark.parametrize(
    "key",
    [
        "sk_51Habc",  # no mode
        "sk_prod_abc",
        "rk_abc",
        "mk_test_abc",
        "whsec_abc",  # the webhook secret, in the wrong setting
        "sk_test_abc\n",  # copied with its line break
        " sk_test_abc",
        "sk_test_ab cd",
        "sk_test_",
        "SK_TEST_ABC",
        "sk_live_" + "a" * 300,
        12345,
        ["sk_test_abc"],
    ],
)
def test_e031_a_key_that_is_neither_test_nor_live(key):
    with _with(STRIPE_SECRET_KEY=key):
        assert our_ids() == ["wagtail_paid_delivery.E031"]
        [message] = _messages("wagtail_paid_delivery.E031")
    assert "neither a test nor a live secret key" in message.msg
    if key != "sk_test_":  # (the hint names that prefix itself)
        assert str(key) not in message.msg + message.hint


def test_e031_says_when_the_key_is_a_webhook_secret():
    with _with(STRIPE_SECRET_KEY="whsec_abc"):
        [message] = _messages("wagtail_paid_delivery.E031")
    assert "looks like a webhook signing secret" in message.msg


@pytest.mark.parametrize("key", ["sk_test_abc", "sk_live_abc", "rk_test_abc", "rk_live_abc"])
def test_secret_and_restricted_keys_of_either_mode_pass(key):
    with _with(STRIPE_SECRET_KEY=key):
        assert our_ids() == []


@pytest.mark.parametrize(
    ("secrets", "positions"),
    [
        (["sk_test_abc"], [1]),
        (["whsec_ok", "abc"], [2]),
        (["whsec_ok", "whsec_x\n", "pk_live_x"], [2, 3]),
        (["whsec_"], [1]),
        ("plain", [1]),
        ([42], [1]),
    ],
)
def test_e032_webhook_secret_without_the_whsec_prefix(secrets, positions):
    with _with(STRIPE_WEBHOOK_SECRETS=secrets):
        messages = _messages("wagtail_paid_delivery.E032")
    assert [m.msg.split("entry ")[1].split()[0] for m in messages] == [str(p) for p in positions]
    assert all(m.is_serious() for m in messages)


def test_e032_never_quotes_the_secret():
    with _with(STRIPE_WEBHOOK_SECRETS=["TOPSECRET1", "whsec_TOPSECRET2 "]):
        messages = _messages("wagtail_paid_delivery.E032")
    assert len(messages) == 2
    assert "TOPSECRET" not in " ".join(m.msg + m.hint for m in messages)


def test_e032_says_when_the_webhook_secret_is_an_api_key():
    with _with(STRIPE_WEBHOOK_SECRETS=["sk_test_abc"]):
        [message] = _messages("wagtail_paid_delivery.E032")
    assert "looks like an API key" in message.msg


@pytest.mark.parametrize("key", ["sk_live_abc", "rk_live_abc"])
def test_e033_live_key_with_debug_on(key):
    with _with(STRIPE_SECRET_KEY=key):
        with override_settings(DEBUG=True):
            assert our_ids() == ["wagtail_paid_delivery.E033"]
            [message] = _messages("wagtail_paid_delivery.E033")
        assert our_ids() == []
    assert message.is_serious()
    with _with(STRIPE_SECRET_KEY="sk_test_abc"), override_settings(DEBUG=True):
        assert our_ids() == []


@pytest.mark.parametrize("key", ["sk_test_abc", "rk_test_abc"])
def test_w030_test_key_under_check_deploy(key):
    with _with(STRIPE_SECRET_KEY=key):
        assert our_ids() == []
        assert our_ids(deploy=True) == ["wagtail_paid_delivery.W030"]
        [message] = _messages("wagtail_paid_delivery.W030", deploy=True)
    assert not message.is_serious()
    assert "test-mode" in message.msg
    with _with(STRIPE_SECRET_KEY="sk_live_abc"):
        assert our_ids(deploy=True) == []


def test_key_shape_checks_stay_quiet_without_credentials():
    # Missing credentials are W001/W002 (E101/E102 under deploy), not a shape problem.
    with override_settings(WAGTAIL_PAID_DELIVERY={}):
        ids = our_ids(deploy=True)
    assert not {"E030", "E031", "E032", "E033", "W030"} & {i.split(".")[1] for i in ids}


# The library's lifetimes (E028) and limits (E023) -------------------------------------------


@pytest.mark.parametrize("key", ["LIBRARY_SIGN_IN_LIFETIME", "LIBRARY_SESSION_LIFETIME"])
@pytest.mark.parametrize("value", [0, -60, timedelta(0), None, "20 minutes", True])
def test_e028_library_lifetimes_must_be_positive_durations(key, value):
    with _with(**{key: value}):
        assert our_ids() == ["wagtail_paid_delivery.E028"]


@pytest.mark.parametrize("value", [60, 1.5, timedelta(minutes=20)])
def test_e028_accepts_positive_durations(value):
    with _with(LIBRARY_SIGN_IN_LIFETIME=value, LIBRARY_SESSION_LIFETIME=value):
        assert our_ids() == []


@pytest.mark.parametrize("key", ["LIBRARY_RATE_LIMIT", "LIBRARY_EMAIL_RATE_LIMIT"])
def test_e023_covers_the_library_limits(key):
    with _with(**{key: (0, 60)}):
        assert our_ids() == ["wagtail_paid_delivery.E023"]


# ORDER_NUMBER_PREFIX (E018) -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["-SHOP", "SHOP 1", "ÄB", "A" * 13, "PD_", 7, None])
def test_e018_order_number_prefix_of_letters_digits_and_hyphens(prefix):
    with _with(ORDER_NUMBER_PREFIX=prefix):
        assert our_ids() == ["wagtail_paid_delivery.E018"]


@pytest.mark.parametrize("prefix", ["", "SHOP-", "pd-2026-", "A" * 12])
def test_e018_accepts_a_short_prefix(prefix):
    with _with(ORDER_NUMBER_PREFIX=prefix):
        assert our_ids() == []


# DELIVERY_PAGE_CSP (E027) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"script-src": ["'self'"]},  # scripts run only with the page's nonce
        {"connect-src": ["'self'"]},
        {"style-src": "'self'"},  # a string, not a list
        {"img-src": ["'self'; script-src *"]},  # would end the directive
        {"font-src": ["https://fonts.example, https://evil.example"]},
        {"style-src": ["'nonce-fixed'"]},  # a fixed nonce is no nonce
        {"img-src": ["'self'", None]},
        ["'self'"],
    ],
)
def test_e027_delivery_page_csp_allows_only_style_font_and_image_sources(value):
    with _with(DELIVERY_PAGE_CSP=value):
        assert our_ids() == ["wagtail_paid_delivery.E027"]


def test_e027_accepts_sources_a_site_layout_needs():
    value = {
        "style-src": ["'self'", "https://fonts.googleapis.com", "'unsafe-inline'"],
        "font-src": ["'self'", "https://fonts.gstatic.com", "data:"],
        "img-src": ["'self'", "https:", "data:", "'sha256-abc+/=='"],
    }
    with _with(DELIVERY_PAGE_CSP=value):
        assert our_ids() == []


# The buyer pages' layout (E016, E017); more cases in test_shop_layout.py.


def test_e016_layout_template_that_cannot_be_loaded():
    with _with(LAYOUT_TEMPLATE="no/such/base.html"):
        assert our_ids() == ["wagtail_paid_delivery.E016"]


@pytest.mark.parametrize("block", ["main", "not a name", "title", None])
def test_e017_layout_block_that_the_layout_does_not_have_or_cannot_be(block):
    with _with(LAYOUT_TEMPLATE="testapp/site_base.html", LAYOUT_BLOCK=block):
        assert our_ids() == ["wagtail_paid_delivery.E017"]


# License keys (E050, E051) --------------------------------------------------------------------

LICENSE_KEY = licenses.generate_signing_key()


def _license_check_ids() -> list[str]:
    from django.core.checks import run_checks

    return [
        m.id
        for m in run_checks()
        if m.id in ("wagtail_paid_delivery.E050", "wagtail_paid_delivery.E051")
    ]


@pytest.mark.parametrize(
    "value", ["not a key", base64.b64encode(b"short").decode(), "-----BEGIN x"]
)
def test_e050_a_signing_key_that_is_not_an_ed25519_key(settings, value):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_SIGNING_KEY": value,
    }
    assert _license_check_ids() == ["wagtail_paid_delivery.E050"]
    # Nothing is shown or accepted with it, and nothing raises.
    assert licenses.signing_key() is None


def test_e051_a_retired_public_key_that_is_not_one(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LICENSE_RETIRED_PUBLIC_KEYS": [
            licenses.public_key_base64(licenses.load_private_key(LICENSE_KEY)),
            "nope",
        ],
    }
    assert _license_check_ids() == ["wagtail_paid_delivery.E051"]


def test_a_pem_signing_key_works_like_the_base64_one(settings):
    from cryptography.hazmat.primitives import serialization

    private = licenses.load_private_key(LICENSE_KEY)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings.WAGTAIL_PAID_DELIVERY = {**settings.WAGTAIL_PAID_DELIVERY, "LICENSE_SIGNING_KEY": pem}
    assert _license_check_ids() == []
    assert licenses.public_key_base64() == licenses.public_key_base64(private)
    assert "BEGIN PUBLIC KEY" in licenses.public_key_pem()


# TRUSTED_PROXIES (E085, E086): the reverse proxies whose X-Forwarded-For is believed.

CLIENT_ADDRESS_MIDDLEWARE = "wagtail_paid_delivery.middleware.ClientAddressMiddleware"


def proxy_check_ids() -> set[str]:
    return {message.id for message in run_checks() if message.id}


@pytest.mark.parametrize("value", ["10.0.0.10", ["10.0.0.300"], ["nginx.internal"], [None]])
def test_invalid_trusted_proxies_are_a_system_check_error(settings, value):
    settings.MIDDLEWARE = [CLIENT_ADDRESS_MIDDLEWARE, *settings.MIDDLEWARE]
    settings.WAGTAIL_PAID_DELIVERY = {**settings.WAGTAIL_PAID_DELIVERY, "TRUSTED_PROXIES": value}
    assert "wagtail_paid_delivery.E085" in proxy_check_ids()


def test_trusted_proxies_without_the_middleware_is_a_system_check_error(settings):
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "TRUSTED_PROXIES": ["127.0.0.1"],
    }
    assert "wagtail_paid_delivery.E086" in proxy_check_ids()
    settings.MIDDLEWARE = [CLIENT_ADDRESS_MIDDLEWARE, *settings.MIDDLEWARE]
    assert not {"wagtail_paid_delivery.E085", "wagtail_paid_delivery.E086"} & proxy_check_ids()


# Update emails (E065-E067) ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -5, 2.5, "60", True, None])
def test_e065_update_email_rate_must_be_a_positive_whole_number(rate):
    with _with(UPDATE_EMAILS_PER_MINUTE=rate):
        assert "wagtail_paid_delivery.E065" in our_ids()


def test_e065_a_sane_update_email_rate_passes():
    with _with(UPDATE_EMAILS_PER_MINUTE=1):
        assert "wagtail_paid_delivery.E065" not in our_ids()


@pytest.mark.parametrize("lifetime", [timedelta(hours=2), 60, "a year", -1])
def test_e066_unsubscribe_link_lifetime_is_at_least_a_day(lifetime):
    with _with(UNSUBSCRIBE_LINK_LIFETIME=lifetime):
        assert "wagtail_paid_delivery.E066" in our_ids()
    with _with(UNSUBSCRIBE_LINK_LIFETIME=timedelta(days=30)):
        assert "wagtail_paid_delivery.E066" not in our_ids()


def test_e067_schedule_publishing_is_a_boolean():
    with _with(SCHEDULE_PUBLISHING="yes"):
        assert "wagtail_paid_delivery.E067" in our_ids()
    with _with(SCHEDULE_PUBLISHING=True):
        assert "wagtail_paid_delivery.E067" not in our_ids()
