"""CHECKOUT_OPTIONS: site-level Stripe Checkout features reach the session Stripe creates."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings
from django.urls import reverse

from tests.factories import ProductPageFactory
from wagtail_paid_delivery.models import Purchase

WAIVER = (
    "I ask for immediate delivery of the download and acknowledge that I thereby lose my "
    "right of withdrawal."
)


def with_options(**options):
    return override_settings(
        WAGTAIL_PAID_DELIVERY={**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_OPTIONS": options}
    )


@pytest.fixture
def product(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1250)


def buy(client, page):
    url = reverse("wagtail_paid_delivery:checkout", args=[page.pk])
    response = client.post(url, HTTP_ORIGIN="http://testserver")
    assert response.status_code == 303
    return response


def session_params(fake_stripe):
    [call] = fake_stripe.calls("post", "/v1/checkout/sessions")
    return call.params


def test_no_options_by_default(client, product, fake_stripe):
    buy(client, product)
    params = session_params(fake_stripe)
    for key in (
        "allow_promotion_codes",
        "automatic_tax",
        "tax_id_collection",
        "invoice_creation",
        "locale",
        "consent_collection",
        "custom_text",
    ):
        assert key not in params


def test_every_option_reaches_stripe(client, product, fake_stripe):
    with with_options(
        allow_promotion_codes=True,
        automatic_tax=True,
        tax_id_collection=True,
        invoice_creation=True,
        locale="de",
        require_terms=True,
        terms_message=WAIVER,
    ):
        buy(client, product)
    params = session_params(fake_stripe)
    purchase = Purchase.objects.get()
    assert params["allow_promotion_codes"] == "true"
    assert params["automatic_tax"] == {"enabled": "true"}
    assert params["tax_id_collection"] == {"enabled": "true"}
    assert params["invoice_creation"] == {
        "enabled": "true",
        "invoice_data": {"metadata": params["metadata"]},
    }
    assert params["invoice_creation"]["invoice_data"]["metadata"]["wpd_purchase"] == str(
        purchase.public_id
    )
    assert params["locale"] == "de"
    assert params["consent_collection"] == {"terms_of_service": "required"}
    assert params["custom_text"] == {"terms_of_service_acceptance": {"message": WAIVER}}
    # The options are part of the session: the fake recorded them.
    session = fake_stripe.sessions[purchase.stripe_checkout_session_id]
    assert session["allow_promotion_codes"] is True and session["locale"] == "de"


def test_terms_without_custom_text(client, product, fake_stripe):
    with with_options(require_terms=True):
        buy(client, product)
    params = session_params(fake_stripe)
    assert params["consent_collection"] == {"terms_of_service": "required"}
    assert "custom_text" not in params


def test_a_second_click_replays_the_same_session_with_options(client, product, fake_stripe):
    with with_options(allow_promotion_codes=True, locale="fr"):
        first = buy(client, product)
        second = buy(client, product)
    assert first["Location"] == second["Location"]
    assert Purchase.objects.count() == 1
