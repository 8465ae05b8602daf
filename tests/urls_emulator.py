from django.urls import include, path

from tests.urls import urlpatterns as base_urlpatterns

urlpatterns = [
    path("stripe-emulator/", include("sandbox.stripe_emulator.urls")),
    *base_urlpatterns,
]
