"""The shop's webhook and the floor it is measured against, for benchmarks/webhook.py."""

import json

import stripe
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from wagtail_paid_delivery.views.webhook import stripe_webhook

#: The plain table of the floor, created by benchmarks/webhook.py.
PLAIN_TABLE = "bench_plain_inbox"
SECRET = "whsec_bench"  # noqa: S105


@csrf_exempt
@login_not_required
@require_POST
def floor(request: HttpRequest) -> HttpResponse:
    """The least a durable webhook can do: stripe-python checks the signature, the body is
    parsed for its id, and one row (id and body) is inserted, in autocommit."""
    body = request.body.decode()
    try:
        stripe.WebhookSignature.verify_header(
            body, request.headers.get("Stripe-Signature", ""), SECRET, 300
        )
    except stripe.SignatureVerificationError:
        return HttpResponseBadRequest("bad signature", content_type="text/plain")
    event_id = json.loads(body)["id"]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {PLAIN_TABLE} (stripe_id, payload) VALUES (%s, %s)",  # noqa: S608
            [event_id, body],
        )
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("floor/", floor),
    path("webhook/", stripe_webhook),
]
