"""``resend/``: "email me my links again", answered the same whatever address was entered.

The page never looks the address up. A valid POST enqueues ``tasks.resend_links`` for any
address (the task decides, out of the request, whether there is anything to send), and the
answer is the same confirmation page with status 200: its body, status and timing say nothing
about whether the address bought.

Two limits keep it from being a mail cannon, both counted in Django's cache:

- per client (``RESEND_RATE_LIMIT``): over it, 429 "try again later" for everyone alike;
- per address (``RESEND_EMAIL_RATE_LIMIT``): over it, silence: the usual confirmation, no task.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_not_required
from django.core.cache import caches
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods
from wagtail.models import Page

from ..conf import app_settings
from ..models import DeliveryCopy
from ..models.pages import ProductPageMixin
from .download import PAGE_HEADERS

#: Dotted path of the task the view enqueues.
RESEND_TASK = "wagtail_paid_delivery.tasks.resend_links"
RESEND_TASK_GROUP = "wagtail_paid_delivery.resend"
#: What ``{product}`` says on the resend pages when no product was chosen.
NO_PRODUCT = _("your purchases")


class ResendForm(forms.Form):
    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "required": True}),
    )
    #: Optional: only this product's links. Filled from ``?product=`` (a product page's link).
    product = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)


def get_product(product_id: Any) -> ProductPageMixin | None:
    """The live product page ``product_id``, or None (unknown ids are simply ignored)."""
    try:
        pk = int(product_id)
    except (TypeError, ValueError):
        return None
    page = Page.objects.live().filter(pk=pk).specific().first()
    return page if isinstance(page, ProductPageMixin) else None


def copy_for(product: ProductPageMixin | None) -> DeliveryCopy:
    return (
        product.get_delivery_copy() if product is not None else DeliveryCopy.objects.get_default()
    )


def form_context(
    form: ResendForm, copy: DeliveryCopy, product: ProductPageMixin | None
) -> dict[str, Any]:
    """The context of ``resend.html``; the admin preview builds it the same way."""
    title = str(getattr(product, "title", "")) if product is not None else ""
    return {
        "form": form,
        "copy": copy,
        "product": product,
        "product_title": title,
        "intro": copy.render("resend_intro", product=title or NO_PRODUCT),
    }


def done_context(
    copy: DeliveryCopy, product: ProductPageMixin | None, email: str = ""
) -> dict[str, Any]:
    """The context of ``resend_done.html``: the one answer every accepted request gets."""
    title = str(getattr(product, "title", "")) if product is not None else ""
    return {
        "copy": copy,
        "product": product,
        "product_title": title,
        "confirmation": copy.render(
            "resend_confirmation", product=title or NO_PRODUCT, email=email
        ),
    }


# Rate limits ----------------------------------------------------------------------------------


def client_key(request: HttpRequest) -> str:
    """The client a limit counts for: its IPv4 address, or its IPv6 /64 (one subscriber)."""
    address = (request.META.get("REMOTE_ADDR") or "").strip()
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)
    return str(ip)


def over_limit(kind: str, identity: str, limit: Any) -> bool:
    """Count one request for ``identity`` in a fixed window; True when over ``limit``.

    ``limit`` is ``(requests, seconds)`` or None (no limit). The identity is hashed, so the
    cache never holds an email address.
    """
    if not limit:
        return False
    allowed, seconds = int(limit[0]), int(limit[1])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    key = f"wagtail_paid_delivery:resend:{kind}:{digest}"
    cache = caches[app_settings.RESEND_CACHE]
    cache.add(key, 0, timeout=seconds)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=seconds)
        count = 1
    return count > allowed


# The view -------------------------------------------------------------------------------------


def _headers(response: HttpResponseBase) -> HttpResponseBase:
    for name, value in PAGE_HEADERS.items():
        response[name] = value
    return response


def enqueue_resend(email: str, product_id: int | None) -> None:
    from django_q.tasks import async_task

    # Nothing was written in this request, so there is no commit to wait for.
    async_task(RESEND_TASK, email, product_id, group=RESEND_TASK_GROUP)


@login_not_required
@csrf_protect
@require_http_methods(["GET", "HEAD", "POST"])
def resend(request: HttpRequest) -> HttpResponseBase:
    template = "wagtail_paid_delivery/resend.html"
    if request.method != "POST":
        product = get_product(request.GET.get("product"))
        form = ResendForm(initial={"product": product.pk if product else None})
        context = form_context(form, copy_for(product), product)
        return _headers(TemplateResponse(request, template, context))

    if over_limit("client", client_key(request), app_settings.RESEND_RATE_LIMIT):
        form = ResendForm()
        context = {**form_context(form, copy_for(None), None), "limited": True}
        response = TemplateResponse(request, template, context, status=429)
        response["Retry-After"] = str(int(app_settings.RESEND_RATE_LIMIT[1]))
        return _headers(response)

    form = ResendForm(request.POST)
    if not form.is_valid():
        # A malformed address is said to be malformed, whoever typed it: that tells nothing
        # about purchases.
        product = get_product(request.POST.get("product"))
        context = form_context(form, copy_for(product), product)
        return _headers(TemplateResponse(request, template, context))

    email = form.cleaned_data["email"].strip()
    product = get_product(form.cleaned_data.get("product"))
    if not over_limit("email", email.lower(), app_settings.RESEND_EMAIL_RATE_LIMIT):
        enqueue_resend(email, product.pk if product is not None else None)
    context = done_context(copy_for(product), product, email)
    return _headers(TemplateResponse(request, "wagtail_paid_delivery/resend_done.html", context))
