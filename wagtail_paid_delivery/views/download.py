"""The buyer's download page, its buttons, and the hand-off URL that serves the bytes.

``d/<token>/`` (GET) only shows: mail scanners open emailed links, so nothing a GET does may
change anything. The button POSTs to ``d/<token>/<file id>/`` and is answered with a 303 to a
signed hand-off URL, where ``serving.serve_file`` counts and streams the file.

A request that names no real link (a made-up token, a forged or truncated hand-off, a link
since removed, a file not the link's product's) is a plain 404 that writes nothing: a flood of
garbage must not grow any table. Requests on a real link are recorded (``DownloadEvent``).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST, require_safe

from .. import delivery, languages, links, screens, serving
from .responses import (
    add_strict_csp,
    delivery_headers,
    not_found,
    render_for,
    see_other,
    strict_csp,
)


@sensitive_variables("token")
def refused(
    request: HttpRequest, error: links.LinkRefused, token: str | None = None
) -> TemplateResponse:
    """The 410 page; ``token``: the link's, when the request carried it (not on a hand-off)."""
    purchase = error.link.purchase
    with languages.speaking(purchase.language):
        context = screens.refused_context(error, delivery.copy_for(purchase), token)
    return render_for(request, purchase, screens.TEMPLATES["refused"], context, status=410)


@login_not_required  # a buyer holds a link, not an account
@require_safe
@delivery_headers
@strict_csp
@sensitive_variables("token")  # kept out of error reports, with check_token's
def download(request: HttpRequest, token: str) -> HttpResponseBase:
    """The download page: the product's files and what is left of the link. Changes nothing."""
    try:
        link = links.check_token(token)
    except links.LinkRefused as error:
        return refused(request, error, token)
    except links.LinkError:
        return not_found()

    with languages.speaking(link.purchase.language):
        screen, context = screens.download_screen(link, token)
    template = screens.TEMPLATES[screen]
    if screen == "refused":  # every file at its limit
        return render_for(request, link.purchase, template, context, status=410)
    response = render_for(request, link.purchase, template, context)
    # The button's 303 leads to a hand-off, which may redirect to the storage (presigned).
    product_files = [item["file"] for item in context["files"]]
    return add_strict_csp(request, response, form_action=serving.redirect_origins(product_files))


@login_not_required  # a buyer holds a link, not an account
@require_POST
@delivery_headers
@strict_csp
@sensitive_variables("token")
def download_file(request: HttpRequest, token: str, file_id: int) -> HttpResponseBase:
    """The download button: check the link and the file, then 303 to a fresh hand-off URL."""
    link, file, counted = links.find_link_with_file(token, file_id)  # one query
    if link is None:
        return not_found()
    try:
        links.check_link(link)
    except links.LinkRefused as error:
        return refused(request, error, token)
    if file is None:
        return not_found()
    if links.downloads_left(link, counted) == 0:
        return refused(request, links.LinkUsedUp(link), token)
    return see_other(links.handoff_url(link, file))


@login_not_required  # a buyer holds a link, not an account
@require_safe
@delivery_headers
@strict_csp
@sensitive_variables("signed")
def handoff(request: HttpRequest, signed: str) -> HttpResponseBase:
    """The bytes: GET and HEAD with Range, counted as docs/architecture.md says."""
    try:
        ticket = links.read_handoff(signed)
    except links.BadHandoff:
        return not_found()  # recorded nowhere: see the module docstring
    link, file = links.find_handoff(ticket)  # the link, its purchase and the file: one query
    if link is None:
        return not_found()

    def record(outcome: str, file_id: int) -> None:
        links.record_event(
            request, link=link, file_id=file_id, outcome=outcome, handoff=ticket.nonce
        )

    try:
        links.check_link(link)
    except links.LinkRefused as error:
        record(error.reason, ticket.file_id)
        return refused(request, error)
    if file is None:
        return not_found()
    try:
        return serving.serve_file(request, link, file, ticket)
    except links.LinkUsedUp as error:
        record(error.reason, ticket.file_id)
        return refused(request, error)
    except serving.FileUnavailable:
        record("missing_file", file.pk)
        context = screens.file_unavailable_context(link)
        return TemplateResponse(request, screens.TEMPLATES["file_unavailable"], context, status=503)
