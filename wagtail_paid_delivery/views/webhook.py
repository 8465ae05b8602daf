"""The Stripe webhook: verify, store, answer 200 (``inbox.store`` queues the work).

The view never calls Stripe and never fulfils anything itself. Stripe retries any delivery that
does not get a 2xx quickly, so the work that can be slow (fetching the session, locking the
purchase, sending email) happens in the task, and a failed task is retried by us from the stored
row, not by Stripe.
"""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .. import inbox, stripe_api

logger = logging.getLogger(__name__)


# csrf_exempt: Stripe cannot send a CSRF token; the signature is the authentication.
# login_not_required: Stripe is never logged in (LoginRequiredMiddleware would redirect it).
# non_atomic_requests: with ATOMIC_REQUESTS the row would only commit after the view returns;
# the inbox's own short atomic block commits it and lets the task run on commit.
@csrf_exempt
@login_not_required
@require_POST
@transaction.non_atomic_requests
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        # (META, not request.headers: that would build a dict of every header first.)
        body = stripe_api.read_webhook(
            read_body(request), request.META.get("HTTP_STRIPE_SIGNATURE")
        )
    except stripe_api.InvalidWebhook as exc:
        # Nothing is stored: an unverified body is not an event, nor is a verified body that
        # cannot be one (see verify_webhook). Stripe shows this reason in its delivery log.
        logger.warning("Rejected Stripe webhook: %s", exc.reason)
        return HttpResponse(exc.reason, status=exc.status, content_type="text/plain")
    stored = inbox.store(body.event, body.text)
    return HttpResponse(stored.value, content_type="text/plain")


def read_body(request: HttpRequest) -> bytes:
    """The request body, refused (413) before it is read when it is larger than a Stripe event
    can be, or than the site's ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0  # Django reads no body then either
    if stripe_api.webhook_too_large(length):
        raise stripe_api.InvalidWebhook("body too large", status=413)
    try:
        return request.body
    except RequestDataTooBig:
        raise stripe_api.InvalidWebhook("body too large", status=413) from None
