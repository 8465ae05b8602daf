"""The public URLconf a site includes: ``path("shop/", include("wagtail_paid_delivery.urls"))``."""

from django.urls import path

from .views import archive, checkout, download, library, resend, success, updates
from .views.licenses import license_endpoint
from .views.webhook import stripe_webhook

app_name = "wagtail_paid_delivery"

urlpatterns: list = [
    path("checkout/<int:page_id>/", checkout.checkout, name="checkout"),
    path("thanks/", success.success, name="success"),
    path("stripe/webhook/", stripe_webhook, name="stripe_webhook"),
    # Downloads: the hand-off first, so "d/h/..." is never read as a token.
    path("d/h/<str:signed>/", download.handoff, name="handoff"),
    # "Download all": the signature right after "d/h/", where the log filter redacts it.
    path("d/h/<str:signed>/all.zip", archive.archive_handoff, name="archive_handoff"),
    path("d/<str:token>/", download.download, name="download"),
    path("d/<str:token>/<int:file_id>/", download.download_file, name="download_file"),
    path("d/<str:token>/all/", archive.download_all, name="download_all"),
    path("resend/", resend.resend, name="resend"),
    path("library/", library.library, name="library"),
    # The sign-in link has the download links' shape (a "d/" segment, then the token), so the
    # log filter that keeps download tokens out of logs keeps this one out too.
    path("library/d/<str:token>/", library.sign_in, name="library_sign_in"),
    path("library/sign-out/", library.sign_out, name="library_sign_out"),
    path("library/<uuid:public_id>/", library.library_download, name="library_download"),
    path("licenses/", license_endpoint, name="licenses"),
    # The update emails' unsubscribe link (List-Unsubscribe): GET asks, POST unsubscribes.
    path("updates/unsubscribe/<str:token>/", updates.unsubscribe, name="unsubscribe"),
]
