"""``library/``: a buyer's purchases, for a signed-in user or by email alone.

- ``library/`` GET: the purchases of the signed-in user and/or of the address this browser
  proved (each paid one with a button); with neither, the email form. POST: that form. The
  answer never looks the address up: a valid POST enqueues ``tasks.send_library_sign_in`` for
  any address and answers the same "check your email" page, so its body, status and timing say
  nothing about whether the address bought. Limits, through ``limits``: per client
  (``LIBRARY_RATE_LIMIT``, 429 for everyone alike) and per address
  (``LIBRARY_EMAIL_RATE_LIMIT``, silent: the usual page, no task).
- ``library/d/<token>/``: the emailed sign-in link. GET shows a button and changes nothing
  (mail scanners open links); POST spends the token and opens the library session.
- ``library/<public id>/`` POST: the button, a fresh link (reason LIBRARY), 303 to its page.
- ``library/sign-out/`` POST: closes the library session.

The rules (what is listed, what a sign-in proves): ``wagtail_paid_delivery.library``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from .. import access, licenses, limits, links, screens, versions
from .. import library as rules
from ..conf import app_settings
from ..forms import LibrarySignInForm
from ..models import DownloadLink, Purchase
from .responses import delivery_headers, not_found, see_other, strict_csp

#: Dotted path of the task the email form enqueues.
SIGN_IN_TASK = "wagtail_paid_delivery.tasks.send_library_sign_in"
SIGN_IN_TASK_GROUP = "wagtail_paid_delivery.library"


def enqueue_sign_in(email: str) -> None:
    from django_q.tasks import async_task

    # The request id makes the task, should the broker run it twice, one email.
    async_task(SIGN_IN_TASK, email, uuid.uuid4().hex, group=SIGN_IN_TASK_GROUP)


def _user(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def _limited(
    request: HttpRequest, template: str, context: dict[str, Any]
) -> HttpResponseBase | None:
    """429 when this client is past ``LIBRARY_RATE_LIMIT`` (counting this request); else None."""
    wait = limits.hit(
        request, "library.client", limits.client_key(request), app_settings.LIBRARY_RATE_LIMIT
    )
    if wait is None:
        return None
    response = TemplateResponse(request, template, {**context, "limited": True}, status=429)
    response["Retry-After"] = str(wait)
    return response


@login_not_required  # a buyer may have no account: that is the point
@csrf_protect
@require_http_methods(["GET", "HEAD", "POST"])
@delivery_headers
@strict_csp
def library(request: HttpRequest) -> HttpResponseBase:
    if request.method == "POST":
        return _request_sign_in(request)
    user, email = _user(request), rules.session_email(request)
    if user is None and email is None:
        form = {"form": LibrarySignInForm()}
        return TemplateResponse(request, screens.TEMPLATES["library_request"], form)
    purchases = list(rules.library_purchases(user, email))
    paid_products = [p.product_id for p in purchases if p.status == Purchase.Status.PAID]
    buyers_pages = access.pages_for(paid_products)
    for purchase in purchases:
        pages = (
            buyers_pages.get(purchase.product_id, [])
            if purchase.status == Purchase.Status.PAID
            else []
        )
        # The pages for this product's buyers: the way back after signing in from one of them.
        purchase.buyers_pages = [  # type: ignore[attr-defined]
            {"title": page.title, "url": page.get_url(request)} for page in pages
        ]
        purchase.library_note = rules.status_note(purchase)  # type: ignore[attr-defined]
        # A key works while its purchase does: a refunded one's is not shown again.
        paid = purchase.status == Purchase.Status.PAID
        license = licenses.license_of(purchase) if paid else None
        purchase.license_key_text = licenses.key_text(license)  # type: ignore[attr-defined]
        # Each file's version as this buyer is served it (number, date, notes).
        served = versions.files_of_purchase(purchase) if paid else []
        purchase.served_files = served  # type: ignore[attr-defined]
    context: dict[str, Any] = {
        "purchases": purchases,
        "signed_in_email": email,
        "form": LibrarySignInForm(),
        "paid": Purchase.Status.PAID,
    }
    return TemplateResponse(request, screens.TEMPLATES["library"], context)


def _request_sign_in(request: HttpRequest) -> HttpResponseBase:
    template = screens.TEMPLATES["library_request"]
    limited = _limited(request, template, {"form": LibrarySignInForm()})
    if limited is not None:
        return limited
    form = LibrarySignInForm(request.POST)
    if not form.is_valid():
        # A malformed address is said to be malformed, whoever typed it: that tells nothing.
        return TemplateResponse(request, template, {"form": form})
    email = form.cleaned_data["email"].strip()
    # Past the address's limit: silence, the same answer with nothing sent.
    if (
        limits.hit(request, "library.email", email.lower(), app_settings.LIBRARY_EMAIL_RATE_LIMIT)
        is None
    ):
        enqueue_sign_in(email)
    context = {
        "email": email,
        "minutes": round(app_settings.library_sign_in_lifetime.total_seconds() / 60),
    }
    return TemplateResponse(request, screens.TEMPLATES["library_sent"], context)


@login_not_required
@csrf_protect
@require_http_methods(["GET", "HEAD", "POST"])
@delivery_headers
@strict_csp  # the token is in the address bar
def sign_in(request: HttpRequest, token: str) -> HttpResponseBase:
    """The emailed link: GET shows a button (changing nothing), POST spends the token."""
    template = screens.TEMPLATES["library_sign_in"]
    invalid = {"valid": False, "form": LibrarySignInForm()}
    if request.method == "POST":
        limited = _limited(request, template, invalid)
        if limited is not None:
            return limited
        try:
            email = rules.use_sign_in(token)
        except rules.InvalidSignIn:
            return TemplateResponse(request, template, invalid, status=410)
        rules.open_session(request, email)
        user = _user(request)
        if user is not None:
            rules.claim_purchases(user, email)
        return see_other(reverse("wagtail_paid_delivery:library"))
    try:
        found = rules.check_sign_in(token)
    except rules.InvalidSignIn:
        return TemplateResponse(request, template, invalid, status=410)
    context = {"valid": True, "token": token, "email": found.email, "user": _user(request)}
    return TemplateResponse(request, template, context)


@login_not_required
@csrf_protect
@require_POST
@delivery_headers
def sign_out(request: HttpRequest) -> HttpResponseBase:
    """Close the library session."""
    rules.close_session(request)
    return see_other(reverse("wagtail_paid_delivery:library"))


@login_not_required
@csrf_protect
@require_POST
@delivery_headers
@strict_csp
def library_download(request: HttpRequest, public_id: uuid.UUID) -> HttpResponseBase:
    """The button: a fresh link for one of the library's paid purchases, then its page."""
    listed = rules.library_purchases(_user(request), rules.session_email(request))
    purchase = listed.filter(public_id=public_id, status=Purchase.Status.PAID).first()
    if purchase is None:
        return not_found()
    try:
        issued = links.issue_link(purchase, reason=DownloadLink.Reason.LIBRARY)
    except links.CannotIssueLink:
        return not_found()
    return see_other(reverse("wagtail_paid_delivery:download", args=[issued.token]))
