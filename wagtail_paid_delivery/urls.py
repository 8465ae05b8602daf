"""The public URLconf a site includes: ``path("shop/", include("wagtail_paid_delivery.urls"))``."""

app_name = "wagtail_paid_delivery"

urlpatterns: list = []
