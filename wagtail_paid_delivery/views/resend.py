"""``resend/``: "email me my links again", answered the same whatever address was entered.

The page never looks the address up. A valid POST enqueues ``tasks.resend_links`` for any
address (the task decides, out of the request, whether there is anything to send), and the
answer is the same confirmation page with status 200: its body, status and timing say nothing
about whether the address bought.

Two limits keep it from being a mail cannon, both counted by the app's one limiter (``limits``):

- per client (``RESEND_RATE_LIMIT``): over it, 429 "try again later" for everyone alike;
- per address (``RESEND_EMAIL_RATE_LIMIT``): over it, silence: the usual confirmation, no task.

The anonymous answer never says links *are* on their way, only that they are sent if the
address has a purchase that can still be downloaded. A request from a link's page (the form
there carries the link's token) with the buyer's own address is answered exactly, since
whoever holds the link already sees its purchase's state: fresh links are on their way while
the purchase is paid; a refunded, revoked or suspended purchase is told so, and nothing is sent.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from .. import delivery, limits, links, screens
from ..conf import app_settings
from ..forms import ResendForm
from ..models import DownloadLink, Purchase
from ..models.pages import live_product_page
from .responses import delivery_headers

#: Dotted path of the task the view enqueues.
RESEND_TASK = "wagtail_paid_delivery.tasks.resend_links"
RESEND_TASK_GROUP = "wagtail_paid_delivery.resend"


def enqueue_resend(email: str, product_id: int | None) -> None:
    from django_q.tasks import async_task

    # Nothing was written in this request, so there is no commit to wait for. The request id
    # makes the task, should the broker run it twice, one email.
    request_id = uuid.uuid4().hex
    async_task(RESEND_TASK, email, product_id, request_id, group=RESEND_TASK_GROUP)


def _form_context(form: ResendForm, product: Any, **extra: Any) -> dict[str, Any]:
    copy = delivery.copy_for(product=product)
    return {**screens.resend_form_context(form, copy, product), **extra}


@login_not_required
@csrf_protect
@require_http_methods(["GET", "HEAD", "POST"])
@delivery_headers
@sensitive_post_parameters("link")  # a download token
def resend(request: HttpRequest) -> HttpResponseBase:
    template = screens.TEMPLATES["resend"]
    if request.method != "POST":
        product = live_product_page(request.GET.get("product"))
        form = ResendForm(initial={"product": product.pk if product else None})
        return TemplateResponse(request, template, _form_context(form, product))

    wait = limits.hit(
        request, "resend.client", limits.client_key(request), app_settings.RESEND_RATE_LIMIT
    )
    if wait is not None:
        context = _form_context(ResendForm(), None, limited=True)
        response = TemplateResponse(request, template, context, status=429)
        response["Retry-After"] = str(wait)
        return response

    form = ResendForm(request.POST)
    if not form.is_valid():
        # A malformed address is said to be malformed, whoever typed it: that tells nothing
        # about purchases.
        product = live_product_page(request.POST.get("product"))
        return TemplateResponse(request, template, _form_context(form, product))

    email = form.cleaned_data["email"].strip()
    product = live_product_page(form.cleaned_data.get("product"))
    link = links.find_link(form.cleaned_data.get("link"))
    if link is not None and link.purchase.email.lower() == email.lower():
        return _resend_for_link(request, link, product)
    # No link, or another address than the buyer's: the one answer for every address.
    _ask(request, email, product.pk if product is not None else None)
    return _anonymous_answer(request, product, email)


def _anonymous_answer(request: HttpRequest, product: Any, email: str) -> TemplateResponse:
    copy = delivery.copy_for(product=product)
    context = screens.resend_done_context(copy, product, email)
    return TemplateResponse(request, screens.TEMPLATES["resend_done"], context)


def _ask(request: HttpRequest, email: str, product_id: int | None) -> bool:
    """Enqueue the resend unless the address is over its limit (then silently nothing)."""
    address_limit = app_settings.RESEND_EMAIL_RATE_LIMIT
    if limits.hit(request, "resend.email", email.lower(), address_limit) is not None:
        return False
    enqueue_resend(email, product_id)
    return True


def _resend_for_link(request: HttpRequest, link: DownloadLink, product: Any) -> TemplateResponse:
    """The answer to the buyer's own address typed on ``link``'s page: exact (its holder sees the
    purchase's state anyway), unless the address is over its limit (then the usual answer)."""
    purchase = link.purchase
    copy = delivery.copy_for(purchase)
    template = screens.TEMPLATES["resend_done"]
    paid = purchase.status == Purchase.Status.PAID
    # Not paid: nothing would be sent, so nothing is asked for and the answer says why.
    if paid and not _ask(request, purchase.email, purchase.product_id):
        return _anonymous_answer(request, product, purchase.email)
    return TemplateResponse(request, template, screens.resend_for_link_context(copy, purchase))
