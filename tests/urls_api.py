"""The test URLs plus Wagtail's API, with the pages endpoint a site with buyers-only pages
should use (as the README shows)."""

from django.urls import path
from wagtail.api.v2.router import WagtailAPIRouter
from wagtail.api.v2.views import PagesAPIViewSet

from tests.urls import urlpatterns as base_urlpatterns
from wagtail_paid_delivery import access


class PublicPagesAPIViewSet(PagesAPIViewSet):
    def get_base_queryset(self):
        return access.without_buyers_only(super().get_base_queryset())


api_router = WagtailAPIRouter("wagtailapi")
api_router.register_endpoint("pages", PublicPagesAPIViewSet)

urlpatterns = [path("api/v2/", api_router.urls), *base_urlpatterns]
