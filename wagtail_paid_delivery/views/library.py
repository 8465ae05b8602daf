"""``library/``: a signed-in buyer's paid purchases, each with a button that issues a fresh link.

The list itself changes nothing; a link (reason LIBRARY) is made only when the buyer presses a
button (POST), which answers 303 to that link's download page. Purchases are matched by user,
and by email address too when ``LIBRARY_MATCH_EMAIL`` is on (only for sites whose accounts have
verified addresses: otherwise signing up with a buyer's address would open their purchases).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from .. import tokens
from ..conf import app_settings
from ..models import DownloadLink, Purchase
from .download import PAGE_HEADERS, _not_found


def library_purchases(user: Any) -> QuerySet[Purchase]:
    """The paid purchases ``user`` may download from the library, newest first."""
    match = Q(user_id=user.pk)
    email = (getattr(user, "email", "") or "").strip()
    if app_settings.LIBRARY_MATCH_EMAIL and email:
        match |= Q(email__iexact=email)
    return (
        Purchase.objects.filter(match, status=Purchase.Status.PAID)
        .select_related("product")
        .order_by("-paid_at", "-pk")
    )


def _headers(response: HttpResponseBase) -> HttpResponseBase:
    for name, value in PAGE_HEADERS.items():
        response[name] = value
    return response


@require_safe
@login_required
def library(request: HttpRequest) -> HttpResponseBase:
    context = {"purchases": list(library_purchases(request.user))}
    return _headers(TemplateResponse(request, "wagtail_paid_delivery/library.html", context))


@require_POST
@login_required
def library_download(request: HttpRequest, public_id: uuid.UUID) -> HttpResponseBase:
    """The button: a fresh link for one of the user's paid purchases, then its download page."""
    purchase = library_purchases(request.user).filter(public_id=public_id).first()
    if purchase is None:
        return _headers(_not_found())
    try:
        issued = tokens.issue_link(purchase, reason=DownloadLink.Reason.LIBRARY)
    except tokens.CannotIssueLink:
        return _headers(_not_found())
    response = HttpResponseRedirect(reverse("wagtail_paid_delivery:download", args=[issued.token]))
    response.status_code = 303
    return _headers(response)
