""" "Download all": the download page's button for every file at once, and the archive's
hand-off URL, where ``serving.archive`` counts each file once and streams one stored ZIP.

The same rules as one file's button and hand-off (``views.download``): the POST checks the link
and answers 303 with a fresh signed hand-off; a request that names no real link is a plain 404
that writes nothing; requests on a real link are recorded, one ``DownloadEvent`` per file.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST, require_safe

from .. import links, screens
from ..models import DownloadLink
from ..serving import archive
from .download import refused
from .responses import delivery_headers, not_found, see_other, strict_csp

#: The page shown when the archive cannot be made now (a file missing from storage) or at all
#: (past the ZIP format's 4 GiB): nothing was counted.
UNAVAILABLE_TEMPLATE = "wagtail_paid_delivery/download_all_unavailable.html"


@login_not_required  # a buyer holds a link, not an account
@require_POST
@delivery_headers
@strict_csp
@sensitive_variables("token")
def download_all(request: HttpRequest, token: str) -> HttpResponseBase:
    """The "Download all" button: 303 to a fresh hand-off for the files with downloads left."""
    try:
        link = links.check_token(token)
    except links.LinkRefused as error:
        return refused(request, error, token)
    except links.LinkError:
        return not_found()
    files = links.archive_files(link)
    if not files:
        return refused(request, links.LinkUsedUp(link), token)
    return see_other(links.archive_handoff_url(link, files))


@login_not_required  # a buyer holds a link, not an account
@require_safe
@delivery_headers
@strict_csp
@sensitive_variables("signed")
def archive_handoff(request: HttpRequest, signed: str) -> HttpResponseBase:
    """The archive's bytes: GET and HEAD with Range, each file counted once."""
    try:
        ticket = links.read_archive_handoff(signed)
    except links.BadHandoff:
        return not_found()
    link = DownloadLink.objects.select_related("purchase").filter(pk=ticket.link_id).first()
    if link is None:
        return not_found()
    files = [links.get_product_file(link, file_id) for file_id in ticket.file_ids]
    found = [file for file in files if file is not None]
    if len(found) != len(files):
        return not_found()  # a file since removed from the product: press the button again

    def record(outcome: str) -> None:
        for file in found:
            links.record_event(
                request,
                link=link,
                file_id=file.pk,
                outcome=outcome,
                handoff=ticket.member(file).nonce,
            )

    try:
        links.check_link(link)
        return archive.serve_archive(request, link, found, ticket)
    except links.LinkRefused as error:
        record(error.reason)
        return refused(request, error)
    except archive.MissingMember as error:
        record("missing_file")
        return _unavailable(request, link, missing=error.file.title)
    except archive.ArchiveTooLarge:
        record("too_large")
        return _unavailable(request, link, too_large=True)


def _unavailable(request: HttpRequest, link: DownloadLink, **reason: object) -> TemplateResponse:
    context = {**screens.file_unavailable_context(link), **reason}
    return TemplateResponse(request, UNAVAILABLE_TEMPLATE, context, status=503)
