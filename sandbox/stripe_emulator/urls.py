"""Mounted by the sandbox at ``stripe-emulator/``; STRIPE_API_BASE points here."""

from django.urls import path

from . import views

app_name = "stripe_emulator"

urlpatterns = [
    # The API, as stripe-python calls it (no trailing slashes, like api.stripe.com).
    path("v1/checkout/sessions", views.api_sessions, name="api_sessions"),
    path("v1/checkout/sessions/<str:session_id>", views.api_session, name="api_session"),
    path(
        "v1/checkout/sessions/<str:session_id>/line_items",
        views.api_line_items,
        name="api_line_items",
    ),
    path("v1/prices", views.api_prices, name="api_prices"),
    path("v1/prices/<str:price_id>", views.api_price, name="api_price"),
    path(
        "v1/payment_intents/<str:payment_intent_id>",
        views.api_payment_intent,
        name="api_payment_intent",
    ),
    path("v1/charges/<str:charge_id>", views.api_charge, name="api_charge"),
    path("v1/events", views.api_events, name="api_events"),
    path("v1/refunds", views.api_refunds, name="api_refunds"),
    path("v1/disputes", views.api_disputes, name="api_disputes"),
    path("v1/disputes/<str:dispute_id>", views.api_dispute, name="api_dispute"),
    # Not Stripe's: what this app's `manage.py trigger` asks for (pay, refund, dispute…),
    # through control.emulator_control.
    path(
        "_emulator/sessions/<str:session_id>/<str:action>",
        views.api_control,
        name="api_control",
    ),
    # The hosted page the buyer is sent to, and the "Stripe Dashboard" of the emulator.
    path("pay/<str:session_id>/", views.hosted_checkout, name="checkout"),
    # Stripe's receipt for a charge (a Charge's receipt_url).
    path("receipts/<str:charge_id>/", views.receipt, name="receipt"),
    path("", views.dashboard, name="dashboard"),
]
