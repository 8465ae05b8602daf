"""The buyer pages inside the site's layout (``LAYOUT_TEMPLATE``, ``LAYOUT_BLOCK``).

Django's ``{% extends %}`` takes a variable, but a block's name cannot be one, and the app's
pages cannot extend the site's base directly: their blocks (``content``, ``title``, ``header``…)
would collide with the site's blocks of the same names. So the pages extend the app's own
``base.html``, which renders their blocks into strings (the ``pd_capture`` tag) and then renders
a *bridge* through the ``pd_layout`` tag:

    {% extends pd_layout_template %}{% block title %}{{ pd_title }}{% endblock %}
    {% block <LAYOUT_BLOCK> %}{{ pd_body }}{% endblock %}

The bridge is built once per template engine and block name (cached) from a block name checked
against ``conf.LAYOUT_BLOCK_RE``; the layout's name is a context variable, not source. The site's
layout renders in its own block namespace: a block it does not have (``title``) is ignored.

A site's base usually expects a Wagtail page. These pages have none, so the layout gets
``page`` = None where the view set none, and ``pd_shop`` (:class:`Shop`: the request's Site,
the home URL, the contact line); the README lists what a layout must tolerate. Should the
site's layout fail anyway (a ``{% pageurl page %}`` without a guard), the page is rendered in
the app's own layout and the error is logged: a buyer's download page must not break on the
site's menu.
With ``DEBUG`` on, the error is raised instead, for the developer to see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import swapper
from django.conf import settings
from django.http import HttpRequest
from django.template import Context, Engine, Template
from django.utils.safestring import SafeString
from wagtail.models import Site

from .conf import DEFAULTS, app_settings
from .models import DeliveryCopy

logger = logging.getLogger(__name__)

#: The app's own layout: a plain page around the content, used by default and as the fallback.
DEFAULT_LAYOUT = DEFAULTS["LAYOUT_TEMPLATE"]
DEFAULT_BLOCK = DEFAULTS["LAYOUT_BLOCK"]


@lru_cache(maxsize=32)
def bridge(engine: Engine, block: str) -> Template:
    """The template that puts a page's title and body into ``block`` of the layout.

    ``block`` must match ``conf.LAYOUT_BLOCK_RE`` (``app_settings.layout_block`` checks it):
    it is the one value written into template source.
    """
    return engine.from_string(
        "{% extends pd_layout_template %}"
        "{% block title %}{{ pd_title }}{% endblock %}"
        f"{{% block {block} %}}{{{{ pd_body }}}}{{% endblock %}}"
    )


@dataclass(frozen=True)
class Shop:
    """What every buyer page says about the shop: the way home and how to reach it."""

    site: Site | None
    home_url: str
    name: str
    contact: SafeString


def shop_for(request: HttpRequest | None, copy: DeliveryCopy | None) -> Shop:
    """The shop as ``request``'s Wagtail Site sees it, with ``copy``'s contact line."""
    site = Site.find_for_request(request) if request is not None else None
    home_url = "/"
    if site is not None:
        home_url = site.root_page.get_url(request) or "/"
    copy = copy if isinstance(copy, DeliveryCopy) else DeliveryCopy.objects.get_default()
    name = site.site_name if site is not None else ""
    return Shop(site=site, home_url=home_url, name=name, contact=copy.render_contact())


def render_page(context: Context) -> SafeString:
    """Render the page whose blocks ``base.html`` captured inside the configured layout."""
    layout = app_settings.LAYOUT_TEMPLATE
    block = app_settings.layout_block
    try:
        return _render(context, layout, block)
    except Exception:
        if settings.DEBUG or (layout, block) == (DEFAULT_LAYOUT, DEFAULT_BLOCK):
            raise
        logger.exception(
            "The layout %r failed on %s; the page was shown in the app's own layout.",
            layout,
            getattr(context.get("request"), "path", "?"),
        )
        return _render(context, DEFAULT_LAYOUT, DEFAULT_BLOCK)


def _render(context: Context, layout: str, block: str) -> SafeString:
    # The engine rendering this page, which finds the site's layout as it found the page.
    engine = getattr(context.template, "engine", None) or Engine.get_default()
    template = bridge(engine, block)
    # The layout sees a Wagtail page or None: not the preview's stand-in, nor a missing name.
    page = context.get("page")
    page_model = swapper.load_model("wagtailcore", "Page")
    extra: dict[str, Any] = {
        "pd_layout_template": layout,
        "page": page if isinstance(page, page_model) else None,
    }
    with context.push(**extra):
        return template.render(context)
