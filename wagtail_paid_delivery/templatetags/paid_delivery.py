"""Template tags of the buyer pages: ``{% load paid_delivery %}``.

- ``{% pd_capture as name %}…{% endpd_capture %}`` renders its content (blocks included, so
  child templates still override them) into the context variable ``name``;
- ``{% pd_layout %}`` renders the captured page inside the site's layout (``layout.render_page``);
- ``{% pd_shop as shop %}``: the way home and the contact line (``layout.Shop``);
- ``{{ moment|pd_time }}``: a time a buyer reads, as ``<time datetime>`` with its zone and how
  far it is ("in 23 hours"); ``local-time.js`` shows it in the buyer's own zone (``times``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.template.base import Node, NodeList, Parser, Token
from django.template.context import Context
from django.utils.safestring import SafeString

from .. import layout, times

register = template.Library()


class CaptureNode(Node):
    #: So ``{% extends %}`` finds the blocks inside (``get_nodes_by_type`` walks these).
    child_nodelists = ("nodelist",)

    def __init__(self, nodelist: NodeList, name: str) -> None:
        self.nodelist = nodelist
        self.name = name

    def render(self, context: Context) -> str:
        context[self.name] = self.nodelist.render(context)
        return ""


@register.tag("pd_capture")
def do_capture(parser: Parser, token: Token) -> CaptureNode:
    bits = token.split_contents()
    if len(bits) != 3 or bits[1] != "as":
        raise template.TemplateSyntaxError("Usage: {% pd_capture as name %}…{% endpd_capture %}")
    nodelist = parser.parse(("endpd_capture",))
    parser.delete_first_token()
    return CaptureNode(nodelist, bits[2])


@register.simple_tag(takes_context=True)
def pd_layout(context: Context) -> SafeString:
    return layout.render_page(context)


@register.simple_tag(takes_context=True)
def pd_shop(context: Context) -> layout.Shop:
    return layout.shop_for(context.get("request"), context.get("copy"))


@register.filter(is_safe=True)
def pd_time(value: Any) -> Any:
    """``<time datetime="ISO">3 December 2026, 9:45 a.m. UTC</time> (in 23 hours)``."""
    if not isinstance(value, datetime):
        return value
    return times.time_element(value)
