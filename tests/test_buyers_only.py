"""Content for buyers only: restricted pages and the BuyersOnlyBlock, through real URLs.

Ownership is what ``access.owns`` says: a paid purchase of the product by the library's
identity (a signed-in user, or an address proven by a library sign-in link).
"""

from __future__ import annotations

import json

import pytest
from django.core import signing
from django.test import override_settings
from wagtail.models import Page, PageViewRestriction

from tests.factories import ProductPageFactory, PurchaseFactory, UserFactory, page_editor
from tests.testapp.models import ArticlePage
from wagtail_paid_delivery import access, fulfillment, library
from wagtail_paid_delivery.models import BuyersOnlyRestriction, Purchase

S = Purchase.Status
SECRET = "The eleventh chapter: where the godwits winter"
BUYER = "reader@example.com"


def article(parent, title="Chapter 11", body=None, **kwargs):
    page = ArticlePage(title=title, body=body or [("paragraph", f"<p>{SECRET}</p>")], **kwargs)
    parent.add_child(instance=page)
    page.save_revision().publish()
    return page


@pytest.fixture
def guide(home):
    return ProductPageFactory(parent=home, title="Field guide", price_amount=1900)


@pytest.fixture
def chapter(home, guide):
    page = article(home)
    BuyersOnlyRestriction.objects.create(page=page, product=guide)
    return page


@pytest.fixture
def purchase(guide):
    return PurchaseFactory(paid=True, product=guide, email=BUYER)


def sign_in(client, address=BUYER):
    """Through the library's real sign-in: the emailed link's button."""
    issued = library.issue_sign_in(address)
    response = client.post(f"/shop/library/d/{issued.token}/")
    assert response.status_code == 303


def assert_private(response, *, no_store=False):
    cache_control = response["Cache-Control"]
    assert "private" in cache_control and "public" not in cache_control
    assert "Cookie" in response["Vary"]
    if no_store:
        assert "no-store" in cache_control


# Restricted pages -------------------------------------------------------------------------------


def test_non_buyer_gets_the_products_page_with_a_buy_button_and_a_sign_in_link(client, chapter):
    response = client.get(chapter.url)
    assert response.status_code == 403
    body = response.content.decode()
    assert SECRET not in body
    assert "The page you opened is for buyers of Field guide." in body
    assert 'action="/shop/checkout/' in body  # the product's own buy form
    assert 'href="/shop/library/"' in body and "Sign in to your library" in body
    assert_private(response, no_store=True)


def test_buyer_signed_in_through_the_library_sees_the_page(client, chapter, purchase):
    sign_in(client)
    response = client.get(chapter.url)
    assert response.status_code == 200
    assert SECRET in response.content.decode()
    assert_private(response, no_store=True)


def test_the_address_matches_in_any_case(client, chapter, purchase):
    sign_in(client, "READER@Example.com")
    assert client.get(chapter.url).status_code == 200


def test_a_signed_in_user_owns_their_own_purchases(client, chapter, guide):
    user = UserFactory(username="owner")
    PurchaseFactory(paid=True, product=guide, email="other@example.com", user=user)
    client.force_login(user)
    assert client.get(chapter.url).status_code == 200


def test_a_buyer_of_another_product_is_told_they_have_no_purchase_of_it(client, chapter, home):
    other = ProductPageFactory(parent=home, title="Star atlas")
    PurchaseFactory(paid=True, product=other, email=BUYER)
    sign_in(client)
    response = client.get(chapter.url)
    assert response.status_code == 403
    assert "Your library has no paid purchase of it." in response.content.decode()
    assert SECRET not in response.content.decode()


@pytest.mark.parametrize("status", ["pending", "failed", "expired"])
def test_purchases_that_were_never_paid_give_nothing(client, chapter, guide, status):
    PurchaseFactory(product=guide, email=BUYER, status=status)
    sign_in(client)
    assert client.get(chapter.url).status_code == 403


def test_descendants_of_a_restricted_page_are_restricted(client, chapter, purchase):
    child = article(chapter, title="Appendix", body=[("paragraph", "<p>Appendix text</p>")])
    assert client.get(child.url).status_code == 403
    sign_in(client)
    assert client.get(child.url).status_code == 200


def test_an_alias_of_a_restricted_page_elsewhere_is_restricted_too(client, chapter, purchase, home):
    elsewhere = article(home, title="Elsewhere", body=[("paragraph", "<p>open</p>")])
    alias = chapter.create_alias(parent=elsewhere, update_slug="chapter-alias")
    response = client.get(alias.url)
    assert response.status_code == 403 and SECRET not in response.content.decode()
    sign_in(client)
    assert SECRET in client.get(alias.url).content.decode()


def test_every_restriction_on_the_way_up_must_be_met(client, chapter, purchase, home):
    atlas = ProductPageFactory(parent=home, title="Star atlas")
    child = article(chapter, title="Both", body=[("paragraph", "<p>Both text</p>")])
    BuyersOnlyRestriction.objects.create(page=child, product=atlas)
    sign_in(client)
    response = client.get(child.url)
    assert response.status_code == 403
    assert "for buyers of Star atlas" in response.content.decode()
    PurchaseFactory(paid=True, product=atlas, email=BUYER)
    assert client.get(child.url).status_code == 200


@pytest.mark.parametrize("decision", ["revoke", "refund", "dispute"])
def test_revoked_refunded_or_disputed_buyers_lose_access_at_once(
    client, chapter, purchase, decision
):
    sign_in(client)
    assert client.get(chapter.url).status_code == 200
    status = {"revoke": S.REVOKED, "refund": S.REFUNDED, "dispute": S.DISPUTED}[decision]
    fulfillment.revoke_purchase(purchase, reason="test", status=status)
    # The same library session, still valid: the purchase no longer counts.
    assert library.session_email(client_request(client)) == BUYER
    response = client.get(chapter.url)
    assert response.status_code == 403
    assert SECRET not in response.content.decode()


def client_request(client):
    """A request carrying the client's session, to read the library's value the way views do."""
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.session = client.session
    return request


def test_the_library_links_a_buyer_back_to_the_pages_for_buyers(client, chapter, purchase):
    sign_in(client)
    body = client.get("/shop/library/").content.decode()
    assert f'For its buyers: <a href="{chapter.url}">Chapter 11</a>' in body
    fulfillment.revoke_purchase(purchase, reason="test")
    assert "For its buyers:" not in client.get("/shop/library/").content.decode()


def test_a_forged_or_foreign_session_value_opens_nothing(client, chapter, purchase):
    session = client.session
    # Signed with the right key but another salt, then not signed at all.
    session[library.SESSION_KEY] = signing.dumps({"e": BUYER, "x": 9999999999}, salt="other")
    session.save()
    assert client.get(chapter.url).status_code == 403
    session[library.SESSION_KEY] = json.dumps({"e": BUYER, "x": 9999999999})
    session.save()
    assert client.get(chapter.url).status_code == 403


def test_an_expired_library_session_opens_nothing(client, chapter, purchase, settings):
    sign_in(client)
    settings.WAGTAIL_PAID_DELIVERY = {
        **settings.WAGTAIL_PAID_DELIVERY,
        "LIBRARY_SESSION_LIFETIME": 0,
    }
    assert client.get(chapter.url).status_code == 403


@pytest.mark.parametrize(
    "suffix", ["?preview=1", "?preview=true&draft=1", "?format=json", "%20", "index.html"]
)
def test_other_spellings_of_the_url_serve_no_content(client, chapter, suffix):
    response = client.get(chapter.url + suffix, follow=True)
    assert SECRET not in response.content.decode()
    assert response.status_code in (403, 404)


def test_the_url_without_its_slash_redirects_to_the_restricted_answer(client, chapter):
    response = client.get(chapter.url.rstrip("/"), follow=True)
    assert response.redirect_chain and response.status_code == 403
    assert SECRET not in response.content.decode()


def test_head_gets_the_same_answer_and_no_content(client, chapter, purchase):
    response = client.head(chapter.url)
    assert response.status_code == 403
    assert SECRET.encode() not in response.content
    sign_in(client)
    assert client.head(chapter.url).status_code == 200


def test_post_to_a_restricted_page_is_refused_too(client, chapter):
    response = client.post(chapter.url, {})
    assert response.status_code == 403
    assert SECRET not in response.content.decode()


def test_a_deleted_product_shows_the_page_to_nobody(client, chapter, guide, purchase):
    sign_in(client)
    Purchase.objects.filter(pk=purchase.pk).update(product=None)  # what deleting it leaves
    guide.delete()
    restriction = BuyersOnlyRestriction.objects.get(page=chapter)
    assert restriction.product_id is None  # not cascaded: the page did not turn public
    response = client.get(chapter.url)
    assert response.status_code == 403
    body = response.content.decode()
    assert SECRET not in body and "This page is not available" in body
    assert "For editors" not in body
    assert_private(response, no_store=True)


def test_editors_read_why_a_page_is_not_available(admin_client, chapter, guide):
    guide.delete()
    response = admin_client.get(chapter.url)
    assert response.status_code == 403
    body = response.content.decode()
    assert SECRET not in body
    assert "For editors: this page is restricted to buyers of a product that was deleted" in body
    assert f"/admin/paid-delivery/buyers-only/{chapter.pk}/" in body


def test_an_unpublished_product_keeps_its_buyers_and_sells_nothing(
    client, chapter, guide, purchase
):
    guide.unpublish()
    response = client.get(chapter.url)
    assert response.status_code == 403
    assert "which is not on sale right now" in response.content.decode()
    sign_in(client)
    assert client.get(chapter.url).status_code == 200


def test_a_failing_check_fails_closed(client, chapter, purchase, monkeypatch, caplog):
    sign_in(client)

    def broken(request, page):
        raise RuntimeError("database went away")

    monkeypatch.setattr(access, "check", broken)
    response = client.get(chapter.url)
    assert response.status_code == 503
    assert SECRET not in response.content.decode()
    assert_private(response, no_store=True)
    assert "Buyers-only check failed" in caplog.text


def test_wagtail_privacy_still_applies_to_buyers(client, chapter, purchase):
    PageViewRestriction.objects.create(page=chapter, restriction_type=PageViewRestriction.LOGIN)
    sign_in(client)
    response = client.get(chapter.url)
    assert response.status_code == 302 and "/_util/login/" in response["Location"]
    user = UserFactory(username="member", email=BUYER)
    client.force_login(user)
    sign_in(client)
    assert client.get(chapter.url).status_code == 200


def test_wagtail_privacy_answers_first_for_strangers(client, chapter):
    PageViewRestriction.objects.create(page=chapter, restriction_type=PageViewRestriction.LOGIN)
    response = client.get(chapter.url)
    assert response.status_code == 302 and "/_util/login/" in response["Location"]


def test_preview_and_view_draft_keep_working_for_editors(admin_client, chapter):
    response = admin_client.get(f"/admin/pages/{chapter.pk}/view_draft/")
    assert response.status_code == 200
    assert SECRET in response.content.decode()


def test_unrestricted_pages_keep_their_caching(client, home, guide):
    response = client.get(guide.url)
    assert response.status_code == 200
    assert "private" not in response.get("Cache-Control", "")


CACHED = {
    "MIDDLEWARE": [
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ],
    "CACHE_MIDDLEWARE_SECONDS": 600,
}


def test_a_shared_cache_never_serves_a_buyers_page_to_others(client, chapter, purchase):
    from django.test import Client

    with override_settings(**CACHED):
        sign_in(client)
        assert SECRET in client.get(chapter.url).content.decode()
        stranger = Client()
        response = stranger.get(chapter.url)
        assert response.status_code == 403
        assert SECRET not in response.content.decode()


def test_search_finds_no_restricted_content_when_sites_filter_with_the_helper(chapter, home):
    public = article(home, title="Open notes", body=[("paragraph", "<p>godwits everywhere</p>")])
    found = access.without_buyers_only(Page.objects.live()).search("godwits")
    assert [p.pk for p in found] == [public.pk]
    listed = access.without_buyers_only(Page.objects.live())
    assert chapter.pk not in {p.pk for p in listed} and public.pk in {p.pk for p in listed}


def test_the_helper_leaves_out_an_alias_of_a_restricted_page_placed_elsewhere(chapter, home):
    elsewhere = article(home, title="Elsewhere", body=[("paragraph", "<p>open</p>")])
    alias = chapter.create_alias(parent=elsewhere, update_slug="chapter-alias")
    listed = {p.pk for p in access.without_buyers_only(Page.objects.live())}
    assert alias.pk not in listed and elsewhere.pk in listed


@override_settings(ROOT_URLCONF="tests.urls_api")
def test_wagtails_api_lists_no_restricted_page_through_the_documented_endpoint(
    client, chapter, purchase
):
    sign_in(client)  # the API knows no library session: a buyer gets nothing more either
    listing = client.get("/api/v2/pages/?format=json").json()
    assert chapter.pk not in [item["id"] for item in listing["items"]]
    assert client.get(f"/api/v2/pages/{chapter.pk}/?format=json").status_code == 404
    assert SECRET not in client.get("/api/v2/pages/?format=json&fields=*").content.decode()


# The block --------------------------------------------------------------------------------------


@pytest.fixture
def notes(home, guide):
    return article(
        home,
        title="Birding notes",
        body=[
            ("paragraph", "<p>Everyone reads this.</p>"),
            (
                "buyers_only",
                {"product": guide, "content": f"<p>{SECRET}</p>", "teaser": ""},
            ),
        ],
    )


def test_block_shows_a_teaser_with_the_buy_link_to_others(client, notes, guide):
    response = client.get(notes.url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Everyone reads this." in body
    assert SECRET not in body
    assert "This part is for buyers of Field guide." in body
    assert f'href="{guide.url}"' in body and "Get Field guide ($19.00)" in body
    assert "Bought it? Sign in to your library" in body
    assert_private(response)


def test_block_shows_its_content_to_owners(client, notes, purchase):
    sign_in(client)
    response = client.get(notes.url)
    body = response.content.decode()
    assert SECRET in body and "This part is for buyers" not in body
    assert_private(response)
    fulfillment.revoke_purchase(purchase, reason="test")
    assert SECRET not in client.get(notes.url).content.decode()


def test_block_teaser_is_the_editors_when_written(client, home, guide):
    page = article(
        home,
        title="Notes 2",
        body=[("buyers_only", {"product": guide, "content": "<p>x</p>", "teaser": "Map inside"})],
    )
    body = client.get(page.url).content.decode()
    assert "Map inside" in body and "This part is for buyers" not in body


def test_block_without_a_request_shows_nobody_the_content(notes):
    assert SECRET not in str(notes.body)


def test_block_content_stays_out_of_search_and_the_api(notes, guide):
    block = notes.body[1]
    assert SECRET not in " ".join(block.block.get_searchable_content(block.value))
    assert ArticlePage.objects.live().search("godwits").count() == 0
    assert block.block.get_api_representation(block.value) == {"product": guide.pk, "teaser": ""}


@override_settings(ROOT_URLCONF="tests.urls_api")
def test_block_content_stays_out_of_wagtails_api(client, notes, guide, purchase):
    sign_in(client)
    detail = client.get(f"/api/v2/pages/{notes.pk}/?format=json")
    assert detail.status_code == 200
    body = detail.json()["body"]
    assert body[1]["type"] == "buyers_only"
    assert body[1]["value"] == {"product": guide.pk, "teaser": ""}
    assert SECRET not in detail.content.decode()


def test_block_shows_its_content_in_an_editors_preview(admin_client, notes):
    response = admin_client.get(f"/admin/pages/{notes.pk}/view_draft/")
    body = response.content.decode()
    assert SECRET in body and "Shown to buyers only (this is a preview)." in body


def test_block_of_a_deleted_product_shows_nothing(client, notes, guide):
    guide.delete()
    body = client.get(ArticlePage.objects.get(pk=notes.pk).url).content.decode()
    assert SECRET not in body
    assert "This part is for buyers only, and not available right now." in body


def test_a_cached_block_page_is_not_served_to_others(client, notes, purchase):
    from django.test import Client

    with override_settings(**CACHED):
        sign_in(client)
        assert SECRET in client.get(notes.url).content.decode()
        assert SECRET not in Client().get(notes.url).content.decode()


# The editor's side ------------------------------------------------------------------------------


def test_page_header_menu_offers_buyers_only(admin_client, home):
    page = article(home, title="Plain")
    response = admin_client.get(f"/admin/pages/{page.pk}/edit/")
    assert f"/admin/paid-delivery/buyers-only/{page.pk}/" in response.content.decode()


def test_editor_restricts_a_page_and_removes_the_restriction(admin_client, client, home, guide):
    page = article(home, title="Plain")
    url = f"/admin/paid-delivery/buyers-only/{page.pk}/"
    form = admin_client.get(url)
    assert form.status_code == 200 and "Only buyers of" in form.content.decode()
    response = admin_client.post(url, {"action": "save", "product": guide.pk})
    assert response.status_code == 302 and response["Location"] == f"/admin/pages/{page.pk}/edit/"
    assert BuyersOnlyRestriction.objects.get(page=page).product_id == guide.pk
    assert client.get(page.url).status_code == 403
    edit = admin_client.get(f"/admin/pages/{page.pk}/edit/")
    assert "this page is shown only to buyers of “Field guide”" in edit.content.decode()
    history = admin_client.get(f"/admin/pages/{page.pk}/history/")
    assert "Buyers only: set" in history.content.decode()
    listing = admin_client.get("/admin/paid-delivery/buyers-only/")
    assert "Plain" in listing.content.decode() and "Field guide" in listing.content.decode()

    admin_client.post(url, {"action": "remove"})
    assert not BuyersOnlyRestriction.objects.filter(page=page).exists()
    assert client.get(page.url).status_code == 200


def test_only_product_pages_can_be_chosen(admin_client, home):
    page = article(home, title="Plain")
    other = article(home, title="Not a product")
    response = admin_client.post(
        f"/admin/paid-delivery/buyers-only/{page.pk}/", {"action": "save", "product": other.pk}
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not BuyersOnlyRestriction.objects.exists()


def test_editor_of_a_broken_restriction_reads_it_in_the_page_editor(admin_client, chapter, guide):
    guide.delete()
    body = admin_client.get(f"/admin/pages/{chapter.pk}/edit/").content.decode()
    assert "the product this page was restricted to was deleted" in body


def test_editors_without_publish_permission_cannot_set_it(client, home, guide):
    page = article(home, title="Plain")
    editor = page_editor(page, permissions=("add", "change"))
    client.force_login(editor)
    response = client.post(
        f"/admin/paid-delivery/buyers-only/{page.pk}/", {"action": "save", "product": guide.pk}
    )
    assert response.status_code in (302, 403)
    assert not BuyersOnlyRestriction.objects.exists()
    edit = client.get(f"/admin/pages/{page.pk}/edit/").content.decode()
    assert f"/admin/paid-delivery/buyers-only/{page.pk}/" not in edit


def test_the_listing_names_only_pages_the_editor_may_restrict(client, chapter, home):
    other = article(home, title="Editable")
    editor = page_editor(other, permissions=("add", "change", "publish"))
    client.force_login(editor)
    body = client.get("/admin/paid-delivery/buyers-only/").content.decode()
    assert "Chapter 11" not in body
