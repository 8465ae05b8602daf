"""Every buyer page in real Chromium passes axe-core with no serious or critical violation, and
its focus rings and input borders stand out from their background (issue 13, point 8).

Each page is made through its real URL with Django's test client (before the browser starts:
Playwright keeps an event loop on the test thread, where the ORM then refuses to run), then
shown in Chromium at that same address on the live server, with the response's own status and
headers (its Content-Security-Policy included), so the page's stylesheet and scripts load as a
buyer's browser loads them. axe-core (tests/package.json; `npm ci --prefix tests`) is put in the
page through the DevTools protocol rather than a <script> tag: the page's CSP stays in force, so
axe sees what a buyer sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.files.base import ContentFile
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from tests.conftest import CHROMIUM_ARGS
from tests.factories import (
    DeliveryCopyFactory,
    ProductFileFactory,
    ProductPageFactory,
    PurchaseFactory,
)
from tests.test_success_page import start_checkout, thanks
from wagtail_paid_delivery import library, links
from wagtail_paid_delivery.models import DownloadLink, FileDownloadCount, Purchase

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

ORIGIN = "http://testserver"
EMAIL = "ada@example.com"
CONTACT = "Questions? Write to help@shop.example."
#: axe's impacts that fail the test.
BLOCKING = {"serious", "critical"}
#: WCAG 1.4.11 (non-text contrast): focus rings and input borders against what is around them.
NON_TEXT_CONTRAST = 3.0


@dataclass
class Shown:
    """One buyer page as the server answered it, to be shown at ``path``."""

    name: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


def shown(name: str, response, path: str | None = None) -> Shown:
    path = path or response.request["PATH_INFO"]
    query = response.request.get("QUERY_STRING", "")
    if query and response.request["REQUEST_METHOD"] == "GET":
        path = f"{path}?{query}"
    headers = {k: v for k, v in response.items() if k.lower() != "set-cookie"}
    return Shown(name, path, response.status_code, headers, response.content)


@pytest.fixture
def shop(home):
    copy = DeliveryCopyFactory(name="Atlas copy", contact_line=CONTACT)
    product = ProductPageFactory(
        parent=home, title="Star atlas", files=0, delivery_copy=copy, price_amount=1250
    )
    for title in ("Atlas (PDF)", "Charts"):
        ProductFileFactory(
            page=product, title=title, file=ContentFile(title.encode() * 500, name="atlas.pdf")
        )
    return product


def link_url(purchase, **changes) -> str:
    issued = links.issue_link(purchase, reason=DownloadLink.Reason.WEBHOOK)
    if changes:
        DownloadLink.objects.filter(pk=issued.link.pk).update(**changes)
    return reverse("wagtail_paid_delivery:download", args=[issued.token])


def success_pages(shop, fake_stripe) -> list[Shown]:
    """The success page in each of its states, for the browser that paid, and a stranger's."""
    client = Client()
    pages = [shown("success-neutral", client.get(reverse("wagtail_paid_delivery:success")))]
    pending = start_checkout(client, shop)
    pages.append(shown("success-pending", thanks(client, pending.stripe_checkout_session_id)))
    fake_stripe.pay(pending.stripe_checkout_session_id, email=EMAIL)
    pages.append(shown("success-paid", thanks(client, pending.stripe_checkout_session_id)))
    DownloadLink.objects.filter(purchase=pending).update(revoked_at=timezone.now())
    pages.append(shown("success-link-gone", thanks(client, pending.stripe_checkout_session_id)))
    for status in ("failed", "refunded", "revoked", "disputed"):
        purchase = start_checkout(client, shop)
        Purchase.objects.filter(pk=purchase.pk).update(status=status)
        response = thanks(client, purchase.stripe_checkout_session_id)
        pages.append(shown(f"success-{status}", response))
    return pages


def delivery_pages(shop) -> list[Shown]:
    """The download page and every way a link is refused, and the resend pages."""
    client = Client()
    paid = PurchaseFactory(paid=True, product=shop, email=EMAIL)
    download = link_url(paid, download_limit=3)
    one_used_up = link_url(paid, download_limit=1)
    first_file = shop.product_files[0]
    FileDownloadCount.objects.create(
        link=DownloadLink.objects.latest("pk"), file_id=first_file.pk, count=1
    )
    past = timezone.now() - timedelta(hours=1)
    refunded = PurchaseFactory(paid=True, product=shop, email=EMAIL)
    refunded_link = link_url(refunded)
    Purchase.objects.filter(pk=refunded.pk).update(status=Purchase.Status.REFUNDED)
    resend = reverse("wagtail_paid_delivery:resend")
    pages = [
        shown("download", client.get(download)),
        shown("download-one-file-used-up", client.get(one_used_up)),
        shown("expired", client.get(link_url(paid, expires_at=past))),
        shown("used-up", client.get(link_url(paid, download_limit=0))),
        shown("revoked", client.get(link_url(paid, revoked_at=timezone.now()))),
        shown("refunded-link", client.get(refunded_link)),
        shown("resend", client.get(resend, {"product": shop.pk})),
        shown("resend-invalid", client.post(resend, {"email": "not an address"})),
        shown("resend-done", client.post(resend, {"email": EMAIL})),
        shown(
            "resend-nothing-sent",
            client.post(resend, {"email": EMAIL, "link": refunded_link.split("/")[-2]}),
        ),
    ]
    # A file that went missing from the storage: the hand-off's 503 page.
    gone = ProductFileFactory(page=shop, title="Gone")
    issued = links.issue_link(paid, reason=DownloadLink.Reason.WEBHOOK)
    button = reverse("wagtail_paid_delivery:download_file", args=[issued.token, gone.pk])
    handoff = client.post(button)["Location"]
    gone.file.storage.delete(gone.file.name)
    pages.append(shown("file-unavailable", client.get(handoff)))
    gone.delete()
    return pages


def library_pages(shop) -> list[Shown]:
    client = Client()
    url = reverse("wagtail_paid_delivery:library")
    pages = [
        shown("library-email", client.get(url)),
        shown("library-invalid", client.post(url, {"email": "nobody"})),
        shown("library-sent", client.post(url, {"email": EMAIL})),
    ]
    sign_in = library.issue_sign_in(EMAIL)
    path = reverse("wagtail_paid_delivery:library_sign_in", args=[sign_in.token])
    pages.append(shown("library-sign-in", client.get(path)))
    gone = reverse("wagtail_paid_delivery:library_sign_in", args=["x" * 43])
    pages.append(shown("library-sign-in-gone", client.get(gone)))
    user = get_user_model().objects.create_user("ada", EMAIL, "pw")
    PurchaseFactory(paid=True, product=shop, user=user, email=EMAIL)
    refunded = PurchaseFactory(paid=True, product=shop, user=user, email=EMAIL)
    Purchase.objects.filter(pk=refunded.pk).update(status=Purchase.Status.REFUNDED)
    client.force_login(user)
    pages.append(shown("library-list", client.get(url)))
    return pages


def checkout_pages(shop) -> list[Shown]:
    client = Client()
    empty = ProductPageFactory(parent=shop.get_parent(), title="Empty box", files=0)
    checkout = reverse("wagtail_paid_delivery:checkout", args=[empty.pk])
    pages = [
        shown("product", client.get(shop.url)),
        shown("checkout-unavailable", client.post(checkout, HTTP_ORIGIN=ORIGIN), "/shop/x/"),
    ]
    from django.conf import settings

    limited = {**settings.WAGTAIL_PAID_DELIVERY, "CHECKOUT_RATE_LIMIT": (1, 600)}
    with override_settings(WAGTAIL_PAID_DELIVERY=limited):
        client.post(checkout, HTTP_ORIGIN=ORIGIN)
        response = client.post(checkout, HTTP_ORIGIN=ORIGIN)
    pages.append(shown("checkout-limited", response, "/shop/y/"))
    return pages


@pytest.fixture
def buyer_pages(shop, fake_stripe) -> list[Shown]:
    mail.outbox = []
    pages = [
        *checkout_pages(shop),
        *success_pages(shop, fake_stripe),
        *delivery_pages(shop),
        *library_pages(shop),
    ]
    expected = {
        "checkout-unavailable": 409,
        "checkout-limited": 429,
        "expired": 410,
        "used-up": 410,
        "revoked": 410,
        "refunded-link": 410,
        "file-unavailable": 503,
        "library-sign-in-gone": 410,
    }
    for page in pages:
        assert page.status == expected.get(page.name, 200), (page.name, page.status)
    return pages


class Browser:
    """A Chromium page that shows stored responses at their own address on the live server."""

    def __init__(self, chromium, live_server, width: int) -> None:
        self.context = chromium.new_context(viewport={"width": width, "height": 800})
        self.page = self.context.new_page()
        self.base = live_server.url
        self.current: Shown | None = None
        self.page.route(f"{self.base}/**", self._answer)

    def _answer(self, route) -> None:
        current = self.current
        if current is not None and route.request.url == self.base + current.path:
            route.fulfill(status=current.status, headers=current.headers, body=current.body)
        else:
            route.continue_()

    def show(self, shown_page: Shown) -> None:
        self.current = shown_page
        response = self.page.goto(self.base + shown_page.path)
        assert response.status == shown_page.status, shown_page.name
        self.page.wait_for_load_state("load")


def run_axe(page, axe_source: str) -> list[dict]:
    page.evaluate(axe_source + "\n;0")
    return page.evaluate(
        """async () => {
            const results = await axe.run(document, {resultTypes: ["violations"]});
            return results.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(" ") + ": " + n.failureSummary),
            }));
        }"""
    )


@pytest.fixture
def chromium(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_every_buyer_page_passes_axe_with_no_serious_violation(
    axe_source, buyer_pages, live_server, chromium
):
    found = {}
    for width in (1280, 390):
        browser = Browser(chromium, live_server, width)
        for buyer_page in buyer_pages:
            browser.show(buyer_page)
            violations = run_axe(browser.page, axe_source)
            blocking = [v for v in violations if v["impact"] in BLOCKING]
            if blocking:
                found[f"{buyer_page.name} at {width}px"] = blocking
        browser.context.close()
    # The checker is awake: a page with the faults it must find.
    browser = Browser(chromium, live_server, 1280)
    browser.page.set_content("<html><body><img src='/x.png'><button></button></body></html>")
    control = {v["id"] for v in run_axe(browser.page, axe_source) if v["impact"] in BLOCKING}
    assert {"image-alt", "button-name", "html-has-lang"} <= control, control
    browser.context.close()
    assert not found, "\n".join(
        f"{name}: {v['id']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"])
        for name, violations in found.items()
        for v in violations
    )


# Non-text contrast: axe checks text contrast only ----------------------------------------------

#: Reads, for the focused element, its outline and the background around it (every ancestor's
#: background colour from the nearest outwards: the browser paints them over each other).
FOCUS_STYLE = """() => {
    const element = document.activeElement;
    const style = getComputedStyle(element);
    const layers = [];
    for (let node = element.parentElement; node; node = node.parentElement) {
        layers.push(getComputedStyle(node).backgroundColor);
    }
    return {
        name: element.tagName + (element.id ? "#" + element.id : "")
            + " " + (element.textContent || element.name || "").trim().slice(0, 40),
        inPage: !!element.closest(".pd-page, .pd-skip") || element.classList.contains("pd-skip"),
        outlineStyle: style.outlineStyle, outlineWidth: parseFloat(style.outlineWidth),
        outlineColor: style.outlineColor, layers: layers,
    };
}"""

#: Each visible text-like input's border colour, its own background, and the one around it.
INPUT_BORDERS = """() => Array.from(document.querySelectorAll(
        ".pd-page input:not([type=hidden]), .pd-page textarea, .pd-page select"))
    .filter(input => input.offsetParent !== null)
    .map(input => {
        const layers = [];
        for (let node = input.parentElement; node; node = node.parentElement) {
            layers.push(getComputedStyle(node).backgroundColor);
        }
        const style = getComputedStyle(input);
        return {name: input.name, border: style.borderTopColor,
                borderWidth: parseFloat(style.borderTopWidth),
                own: style.backgroundColor, layers: layers};
    })"""

RGBA = re.compile(r"rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)")


def rgba(css: str) -> tuple[float, float, float, float]:
    match = RGBA.fullmatch(css.strip())
    assert match, f"not an rgb() colour: {css}"
    red, green, blue, alpha = match.groups()
    return float(red), float(green), float(blue), float(alpha) if alpha is not None else 1.0


def backdrop(layers: list[str], over: str | None = None) -> tuple[float, float, float]:
    """The colour seen through ``layers`` (nearest first) on a white canvas, then ``over``."""
    colour = (255.0, 255.0, 255.0)
    for css in [*reversed(layers), *([over] if over else [])]:
        red, green, blue, alpha = rgba(css)
        colour = tuple(
            c * (1 - alpha) + n * alpha for c, n in zip(colour, (red, green, blue), strict=True)
        )
    return colour


def luminance(colour) -> float:
    def channel(value: float) -> float:
        value /= 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4

    red, green, blue = (channel(c) for c in colour[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(one, other) -> float:
    """WCAG's contrast ratio of two opaque colours."""
    lighter, darker = sorted((luminance(one), luminance(other)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


#: Pages with every kind of control a buyer can reach: links, buttons, a disclosure, inputs.
CONTRAST_PAGES = {
    "product",
    "success-paid",
    "download",
    "expired",
    "resend-invalid",
    "library-email",
    "library-list",
}


def test_focus_rings_and_input_borders_have_3_to_1_contrast(buyer_pages, live_server, chromium):
    browser = Browser(chromium, live_server, 1280)
    page = browser.page
    checked, failures = [], []
    for buyer_page in (p for p in buyer_pages if p.name in CONTRAST_PAGES):
        browser.show(buyer_page)
        for field in page.evaluate(INPUT_BORDERS):
            outside = contrast(rgba(field["border"]), backdrop(field["layers"]))
            inside = contrast(rgba(field["border"]), backdrop(field["layers"], field["own"]))
            checked.append(f"{buyer_page.name} input {field['name']}")
            if min(outside, inside) < NON_TEXT_CONTRAST or field["borderWidth"] < 1:
                failures.append(f"{buyer_page.name}: input {field['name']} border {outside:.2f}")
        # Tab through the page as a keyboard user does: every stop shows a ring that stands out.
        seen = set()
        for _ in range(40):
            page.keyboard.press("Tab")
            focus = page.evaluate(FOCUS_STYLE)
            if focus["name"] in seen or focus["name"].startswith("BODY"):
                break
            seen.add(focus["name"])
            if not focus["inPage"]:
                continue
            ratio = contrast(rgba(focus["outlineColor"]), backdrop(focus["layers"]))
            checked.append(f"{buyer_page.name} focus {focus['name']}")
            if (
                focus["outlineStyle"] in ("none", "hidden")
                or focus["outlineWidth"] < 2
                or ratio < NON_TEXT_CONTRAST
            ):
                failures.append(
                    f"{buyer_page.name}: {focus['name']}: {focus['outlineStyle']} "
                    f"{focus['outlineWidth']}px {focus['outlineColor']}, contrast {ratio:.2f}"
                )
    browser.context.close()
    assert not failures, "\n".join(failures)
    # The walk reached what it should: inputs, buttons, the disclosure, links.
    assert any("input email" in c for c in checked)
    assert any("SUMMARY" in c for c in checked)
    assert sum("focus BUTTON" in c for c in checked) >= 4
    assert sum("focus A" in c for c in checked) >= 4
