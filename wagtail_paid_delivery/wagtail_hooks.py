"""Wagtail admin registration: the copy snippet and the editors' private-file view."""

from django.urls import include, path
from wagtail import hooks
from wagtail.snippets.models import register_snippet

from . import admin_urls
from .viewsets import DeliveryCopyViewSet

register_snippet(DeliveryCopyViewSet)


@hooks.register("register_admin_urls")
def register_admin_urls():
    return [path("paid-delivery/", include(admin_urls, namespace="wagtail_paid_delivery_admin"))]
