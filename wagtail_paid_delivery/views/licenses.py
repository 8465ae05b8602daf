"""``licenses/``: an app validates, activates or deactivates a license key (JSON in, JSON out).

``POST {"action": "validate" | "activate" | "deactivate", "key": "...", "instance": "..."}``.
No cookies or CSRF token (apps are not browsers; the key is the credential), a rate limit per
client (``LICENSE_RATE_LIMIT``) and one answer for every key that is not a key the shop issued,
malformed or unknown alike (``licenses.answer``).
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from .. import licenses, limits
from ..conf import app_settings

ACTIONS = ("validate", "activate", "deactivate")
#: A key is 136 characters; anything much longer is not a license request.
MAX_BODY = 2048


def _bad(reason: str) -> JsonResponse:
    return JsonResponse({"status": licenses.BAD_REQUEST, "error": reason}, status=400)


@csrf_exempt
@login_not_required
@never_cache
@require_POST
@sensitive_post_parameters("key")
def license_endpoint(request: HttpRequest) -> JsonResponse:
    wait = limits.hit(
        request, "licenses.client", limits.client_key(request), app_settings.LICENSE_RATE_LIMIT
    )
    if wait is not None:
        response = JsonResponse({"status": "rate_limited", "retry_after": wait}, status=429)
        response["Retry-After"] = str(wait)
        return response
    if len(request.body) > MAX_BODY:
        return _bad("The request body is too large.")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return _bad("Send a JSON object.")
    if not isinstance(data, dict):
        return _bad("Send a JSON object.")
    action = data.get("action", "validate")
    if action not in ACTIONS:
        return _bad("action is one of: validate, activate, deactivate.")
    instance = licenses.clean_instance(data.get("instance"))
    if instance is None and (action != "validate" or data.get("instance") is not None):
        return _bad("instance is a printable string of 1 to 200 characters.")
    result = licenses.answer(action, data.get("key"), instance or "")
    return JsonResponse(result.json(), status=result.http_status)
