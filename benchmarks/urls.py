"""Three webhook endpoints of increasing work, for benchmarks/webhook.py."""

from django.contrib.auth.decorators import login_not_required
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from wagtail_paid_delivery import stripe_api
from wagtail_paid_delivery.views.webhook import stripe_webhook

#: The plain table of the "insert" variant, created by benchmarks/webhook.py.
PLAIN_TABLE = "bench_plain_inbox"


@csrf_exempt
@login_not_required
@require_POST
@transaction.non_atomic_requests
def bare(request: HttpRequest) -> HttpResponse:
    """Verify the signature, nothing else."""
    try:
        stripe_api.verify_webhook(request.body, request.headers.get("Stripe-Signature"))
    except stripe_api.InvalidWebhook as exc:
        return HttpResponseBadRequest(exc.reason, content_type="text/plain")
    return HttpResponse("ok", content_type="text/plain")


@csrf_exempt
@login_not_required
@require_POST
@transaction.non_atomic_requests
def insert(request: HttpRequest) -> HttpResponse:
    """Verify, then insert one row (event id and body) into a plain table."""
    try:
        event = stripe_api.verify_webhook(request.body, request.headers.get("Stripe-Signature"))
    except stripe_api.InvalidWebhook as exc:
        return HttpResponseBadRequest(exc.reason, content_type="text/plain")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {PLAIN_TABLE} (stripe_id, payload) VALUES (%s, %s)",  # noqa: S608
            [event["id"], request.body.decode()],
        )
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bare/", bare),
    path("insert/", insert),
    path("webhook/", stripe_webhook),
]
