"""A site that serves MEDIA_ROOT and STATIC_ROOT itself and mounts django-private-storage's URLs.

Used by tests/test_private_files.py to show that none of these reach a product file's bytes for
anyone but a superuser (private_storage's own default rule).
"""

from django.conf import settings
from django.urls import include, path, re_path
from django.views.static import serve

from tests.urls import urlpatterns as site_urlpatterns

urlpatterns = [
    # What django.conf.urls.static.static() adds in development (it is a no-op with DEBUG off).
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
    path("private-media/", include("private_storage.urls")),
    *site_urlpatterns,
]
