"""The sandbox's URLs: the shop's own views, the Wagtail admin, then Wagtail's page tree.

django-private-storage's URLconf is deliberately absent: it would serve any private file to
whoever passes its permission function. Paid files leave only through download links.
"""

from django.conf import settings
from django.conf.urls.static import static
from django.urls import include, path
from wagtail import urls as wagtail_urls
from wagtail.admin import urls as wagtailadmin_urls
from wagtail.documents import urls as wagtaildocs_urls

urlpatterns = [
    path("admin/", include(wagtailadmin_urls)),
    path("documents/", include(wagtaildocs_urls)),
    path("shop/", include("wagtail_paid_delivery.urls")),
]

# The Stripe emulator, used when no real Stripe key is configured; only if the app exists.
if settings.STRIPE_EMULATOR_INSTALLED:
    urlpatterns.append(path("stripe-emulator/", include("sandbox.stripe_emulator.urls")))

if settings.DEBUG:
    # Public media only (Wagtail images and documents); PRIVATE_STORAGE_ROOT is not under it.
    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)

# Wagtail's catch-all serves the page tree; it must come last.
urlpatterns.append(path("", include(wagtail_urls)))
