"""``library/``: a signed-in buyer's paid purchases, each with a button that issues a fresh link.

The list itself changes nothing; a link (reason LIBRARY) is made only when the buyer presses a
button (POST), which answers 303 to that link's download page. Which purchases a user sees:
``delivery.library_purchases``.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_POST, require_safe

from .. import delivery, links, screens
from ..models import DownloadLink
from .responses import delivery_headers, not_found, see_other, strict_csp


@require_safe
@login_required
@delivery_headers
@strict_csp
def library(request: HttpRequest) -> HttpResponseBase:
    context = {"purchases": list(delivery.library_purchases(request.user))}
    return TemplateResponse(request, screens.TEMPLATES["library"], context)


@require_POST
@login_required
@delivery_headers
@strict_csp
def library_download(request: HttpRequest, public_id: uuid.UUID) -> HttpResponseBase:
    """The button: a fresh link for one of the user's paid purchases, then its download page."""
    purchase = delivery.library_purchases(request.user).filter(public_id=public_id).first()
    if purchase is None:
        return not_found()
    try:
        issued = links.issue_link(purchase, reason=DownloadLink.Reason.LIBRARY)
    except links.CannotIssueLink:
        return not_found()
    return see_other(reverse("wagtail_paid_delivery:download", args=[issued.token]))
