from django.urls import include, path
from wagtail import urls as wagtail_urls
from wagtail.admin import urls as wagtailadmin_urls

urlpatterns = [
    path("admin/", include(wagtailadmin_urls)),
    path("shop/", include("wagtail_paid_delivery.urls")),
    path("", include(wagtail_urls)),
]
