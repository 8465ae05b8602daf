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
    path("v1/prices/<str:price_id>", views.api_price, name="api_price"),
    # The hosted page the buyer is sent to.
    path("pay/<str:session_id>/", views.hosted_checkout, name="checkout"),
]
