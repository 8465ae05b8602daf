"""The unsubscribe link of update emails: GET shows a button, POST unsubscribes.

A mail client's one-click unsubscribe (RFC 8058) POSTs ``List-Unsubscribe=One-Click`` to the
URL of the ``List-Unsubscribe`` header, with no cookie and no CSRF token: the signed token in
the URL is the authority, so the view is CSRF-exempt. A GET (a mail scanner, a preview) changes
nothing.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .. import screens, updates
from .responses import delivery_headers, strict_csp

#: The page's status for each refusal.
STATUS = {"invalid": 400, "expired": 410}


@login_not_required
@csrf_exempt  # RFC 8058's POST carries no CSRF token; the signed token is the authority.
@require_http_methods(["GET", "HEAD", "POST"])
@delivery_headers
@strict_csp  # the token is in the address bar
def unsubscribe(request: HttpRequest, token: str) -> HttpResponseBase:
    template = screens.TEMPLATES["unsubscribe"]
    try:
        digest = updates.read_unsubscribe_token(token)
    except updates.ExpiredUnsubscribe:
        return TemplateResponse(request, template, {"state": "expired"}, status=STATUS["expired"])
    except updates.InvalidUnsubscribe:
        return TemplateResponse(request, template, {"state": "invalid"}, status=STATUS["invalid"])
    if request.method == "POST":
        updates.unsubscribe(digest)
        return TemplateResponse(request, template, {"state": "done"})
    return TemplateResponse(request, template, {"state": "ask", "token": token})
