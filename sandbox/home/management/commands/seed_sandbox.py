"""Seed the sandbox: home page, two live products with real files, a bundle of both, a
pay-what-you-want app that issues license keys, default
copy, an admin, and two articles for the Field Guide's buyers (a whole page restricted to them,
and a page with a ``BuyersOnlyBlock``).

Idempotent: a second run finds everything in place and changes nothing. Each run also points the
default Wagtail Site at 127.0.0.1:<port>, so URLs built from the site root match the port in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from wagtail.models import Page, Site

from sandbox.home import demo_files
from sandbox.home.models import ArticlePage, HomePage
from wagtail_paid_delivery.models import BundleItem, BuyersOnlyRestriction, DeliveryCopy
from wagtail_paid_delivery.product.models import ProductFile, ProductPage

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"  # sandbox only


@dataclass(frozen=True)
class DemoFile:
    title: str
    filename: str
    build: Any  # () -> bytes


@dataclass(frozen=True)
class DemoProduct:
    slug: str
    title: str
    intro: str
    body: str
    price_amount: int  # minor units: cents for USD, whole yen for JPY
    currency: str
    files: tuple[DemoFile, ...]
    #: The price is the minimum; the buyer chooses the amount.
    pay_what_you_want: bool = False
    #: A number: each paid purchase gets a license key for this many activations.
    license_activation_limit: int | None = None


PRODUCTS = (
    DemoProduct(
        slug="field-guide",
        title="Field Guide (PDF)",
        intro="A printable pocket guide to the birds of the shoreline, with a checklist.",
        body=(
            "<p>Two pages you can print and fold into a pocket: what to look for, when to go, "
            "and a checklist to tick off on the day.</p>"
            "<ul><li>Eight common shorebirds, with the marks that tell them apart</li>"
            "<li>Tide-line tips for better sightings</li><li>Letter-size PDF</li></ul>"
        ),
        price_amount=1900,
        currency="USD",
        # Two files, so the download page offers "Download all".
        files=(
            DemoFile("Field Guide", "field-guide.pdf", demo_files.field_guide_pdf),
            DemoFile("Shoreline checklist", "shoreline-checklist.txt", demo_files.checklist_txt),
        ),
    ),
    DemoProduct(
        slug="sample-pack",
        title="Sample Pack (ZIP)",
        intro="Four clean sine tones, ready to drop into your next track.",
        body=(
            "<p>A small pack of short, royalty-free tones (C4, E4, G4 and C5) as 16-bit WAV "
            "files, in one ZIP archive.</p>"
            "<ul><li>Four WAV files, 8 kHz mono</li><li>CC0: use them anywhere</li></ul>"
        ),
        price_amount=1200,
        currency="JPY",
        files=(DemoFile("Sample Pack", "sample-pack.zip", demo_files.sample_pack_zip),),
    ),
    DemoProduct(
        slug="tide-clock",
        title="Tide Clock (app)",
        intro="A small app that tells you the next high water.",
        body=(
            "<p>Your receipt carries a license key that the app checks; it runs on two "
            "computers at once.</p>"
        ),
        price_amount=500,
        currency="USD",
        files=(DemoFile("Tide Clock", "tide-clock.zip", demo_files.tide_clock_zip),),
        pay_what_you_want=True,
        license_activation_limit=2,
    ),
)


WINTER_CHAPTER = (
    "<p>When the easterlies come, the shoreline empties and fills again: the godwits leave, the "
    "dunlins arrive in their thousands. This chapter follows them week by week.</p>"
    "<ul><li>Where the flocks roost at high tide</li><li>How to tell a dunlin from a knot in "
    "winter plumage</li><li>A cold-weather checklist</li></ul>"
)
NOTES_OPEN = (
    "<p>Three mornings on the estuary: the light, the wind, and what the birds did. Anyone can "
    "read these notes.</p>"
)
NOTES_FOR_BUYERS = (
    "<p><b>Tide table, next season:</b> spring tides on the 3rd and the 18th of each month; go "
    "out two hours before high water.</p>"
)
#: A bundle of every demo product at its own price: buying it delivers each product's files.
BUNDLE = DemoProduct(
    slug="shoreline-bundle",
    title="Shoreline Bundle",
    intro="The Field Guide and the Sample Pack together, for less.",
    body=(
        "<p>Both products in one purchase. Each one arrives with its own download link, on the "
        "confirmation page and in one email, and stays in your library.</p>"
    ),
    price_amount=2400,
    currency="USD",
    files=(),
)


class Command(BaseCommand):
    help = (
        "Create the sandbox's home page, demo products (with files), default delivery copy and "
        "admin user, and point the default site at 127.0.0.1:<port>. Safe to run repeatedly."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port",
            type=int,
            default=settings.SANDBOX_PORT,
            help="Port of the default Wagtail Site (default: SANDBOX_PORT, else 8000).",
        )

    def handle(self, *args: Any, port: int, **options: Any) -> None:
        self.changes: list[str] = []
        with transaction.atomic():
            home = self.ensure_home()
            self.ensure_site(home, port)
            DeliveryCopy.objects.get_default()  # post_migrate made it; recreate if deleted
            products = [self.ensure_product(home, spec) for spec in PRODUCTS]
            products.append(self.ensure_bundle(home, products[:2]))
            articles = self.ensure_articles(home, products[0])
            password_known = self.ensure_admin()

        for change in self.changes:
            self.stdout.write(f"  {change}")
        if not self.changes:
            self.stdout.write("Sandbox data already in place; nothing changed.")

        base = f"http://127.0.0.1:{port}"
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"Site:   {base}/"))
        for page in products:
            self.stdout.write(f"        {page.title}: {page.price_display}  {base}{page.url}")
        for article, note in articles:
            self.stdout.write(f"        {article.title} ({note}): {base}{article.url}")
        self.stdout.write(self.style.SUCCESS(f"Admin:  {base}/admin/"))
        if password_known:
            self.stdout.write(
                f"        username: {ADMIN_USERNAME}   password: {ADMIN_PASSWORD}   (sandbox only)"
            )
        else:
            self.stdout.write(
                f"        username: {ADMIN_USERNAME}   (password changed since it was seeded)"
            )
        self.stdout.write(self.style.SUCCESS(f"Stripe: {stripe_line(base)}"))
        self.stdout.write(self.style.SUCCESS(f"Mail:   {settings.EMAIL_FILE_PATH}/"))
        self.stdout.write("        every email the shop sends, one file each (nothing leaves)")

    # Each step finds what is there and only creates or fixes what is missing.

    def ensure_home(self) -> HomePage:
        home = HomePage.objects.order_by("path").first()
        if home is not None:
            return home
        root = Page.get_first_root_node()
        # Wagtail's first migration creates a plain "Welcome" page with the slug "home"; the
        # sandbox's home page takes its place (deleting it also deletes the Site pointing at it,
        # which ensure_site recreates).
        welcome = Page.objects.filter(
            depth=2, slug="home", content_type=ContentType.objects.get_for_model(Page)
        ).first()
        if welcome is not None and welcome.numchild == 0:
            welcome.delete()
            root.refresh_from_db()
        home = HomePage(
            title="Digital goods, delivered",
            slug="home" if not root.get_children().filter(slug="home").exists() else "shop",
            intro=(
                "Pay securely with Stripe Checkout and download your files straight away. "
                "Every purchase comes with a private, expiring link, sent by email too."
            ),
        )
        root.add_child(instance=home)
        home.save_revision().publish()
        self.changes.append("Created the home page.")
        return home

    def ensure_site(self, home: HomePage, port: int) -> None:
        site = Site.objects.filter(is_default_site=True).first()
        wanted = {
            "hostname": "127.0.0.1",
            "port": port,
            "root_page_id": home.pk,
            "site_name": settings.WAGTAIL_SITE_NAME,
        }
        if site is None:
            Site.objects.create(is_default_site=True, **wanted)
            self.changes.append(f"Created the default site at 127.0.0.1:{port}.")
            return
        stale = {k: v for k, v in wanted.items() if getattr(site, k) != v}
        if stale:
            for key, value in stale.items():
                setattr(site, key, value)
            site.save()
            self.changes.append(f"Pointed the default site at 127.0.0.1:{port}.")

    def ensure_product(self, home: HomePage, spec: DemoProduct) -> ProductPage:
        page = ProductPage.objects.child_of(home).filter(slug=spec.slug).first()
        created = page is None
        if page is None:
            page = ProductPage(
                title=spec.title,
                slug=spec.slug,
                intro=spec.intro,
                body=spec.body,
                price_amount=spec.price_amount,
                currency=spec.currency,
                pay_what_you_want=spec.pay_what_you_want,
                license_activation_limit=spec.license_activation_limit,
            )
            home.add_child(instance=page)
            self.changes.append(f"Created the product page {spec.title!r}.")

        files_changed = False
        for order, file_spec in enumerate(spec.files):
            files_changed |= self.ensure_file(page, file_spec, order)

        if created or files_changed or not page.live:
            # Publish a revision that includes the files, so the editor shows them and a later
            # publish from the admin keeps them.
            page = ProductPage.objects.get(pk=page.pk)
            page.save_revision().publish()
        return page

    def ensure_bundle(self, home: HomePage, included: list[ProductPage]) -> ProductPage:
        page = self.ensure_product(home, BUNDLE)
        have = set(BundleItem.objects.filter(bundle=page).values_list("product_id", flat=True))
        missing = [p for p in included if p.pk not in have]
        if not missing:
            return page
        for order, product in enumerate(included):
            if product.pk not in have:
                BundleItem.objects.create(bundle=page, product=product, sort_order=order)
                self.changes.append(f"Included {product.title!r} in {page.title!r}.")
        # Published with its items, so the editor shows them and a later publish keeps them.
        page = ProductPage.objects.get(pk=page.pk)
        page.save_revision().publish()
        return page

    def ensure_file(self, page: ProductPage, spec: DemoFile, order: int) -> bool:
        product_file = ProductFile.objects.filter(page=page, title=spec.title).first()
        if product_file is not None and product_file.file:
            if product_file.file.storage.exists(product_file.file.name):
                return False
            self.changes.append(f"Re-created the missing file {spec.filename!r}.")
        else:
            product_file = ProductFile(page=page, title=spec.title, sort_order=order)
            self.changes.append(f"Added the file {spec.filename!r} to {page.title!r}.")
        # Saved through the model with an uncommitted file: size and sha256 are recorded, the
        # bytes go to private storage (PRIVATE_STORAGE_ROOT), never under MEDIA_ROOT.
        product_file.file = ContentFile(spec.build(), name=spec.filename)
        product_file.save()
        return True

    def ensure_articles(self, home: HomePage, product: ProductPage) -> list[tuple[Any, str]]:
        """The winter chapter (the whole page for the product's buyers) and the birding notes
        (one block for them); the restriction is put back if an editor removed it."""
        chapter = self.ensure_article(
            home,
            "winter-chapter",
            "The winter chapter",
            f"A bonus chapter for buyers of the {product.title}.",
            [("paragraph", WINTER_CHAPTER)],
        )
        restriction = BuyersOnlyRestriction.objects.filter(page=chapter).first()
        if restriction is None or restriction.product_id != product.pk:
            BuyersOnlyRestriction.objects.update_or_create(
                page=chapter, defaults={"product": product}
            )
            self.changes.append(f"Restricted {chapter.title!r} to buyers of {product.title!r}.")
        notes = self.ensure_article(
            home,
            "birding-notes",
            "Birding notes",
            "Notes from the shoreline, with a tide table for buyers.",
            [
                ("paragraph", NOTES_OPEN),
                (
                    "buyers_only",
                    {
                        "product": product,
                        "content": NOTES_FOR_BUYERS,
                        "teaser": "The season's tide table is for buyers of the Field Guide.",
                    },
                ),
            ],
        )
        return [(chapter, "buyers only"), (notes, "one block for buyers")]

    def ensure_article(
        self, home: HomePage, slug: str, title: str, intro: str, body: list[Any]
    ) -> ArticlePage:
        page = ArticlePage.objects.child_of(home).filter(slug=slug).first()
        if page is not None:
            return page
        page = ArticlePage(title=title, slug=slug, intro=intro, body=body)
        home.add_child(instance=page)
        page.save_revision().publish()
        self.changes.append(f"Created the article {title!r}.")
        return page

    def ensure_admin(self) -> bool:
        """Create the sandbox admin if missing; True if its password is still the seeded one."""
        User = get_user_model()
        user = User.objects.filter(username=ADMIN_USERNAME).first()
        if user is None:
            User.objects.create_superuser(ADMIN_USERNAME, "admin@sandbox.invalid", ADMIN_PASSWORD)
            self.changes.append(f"Created the superuser {ADMIN_USERNAME!r}.")
            return True
        return user.check_password(ADMIN_PASSWORD)


def stripe_line(base: str) -> str:
    """Where payments go: the emulator's dashboard, or Stripe's test mode."""
    api_base = settings.WAGTAIL_PAID_DELIVERY.get("STRIPE_API_BASE")
    if api_base and api_base == getattr(settings, "STRIPE_EMULATOR_URL", None):
        return f"{base}/stripe-emulator/   the emulator's dashboard (no real payment)"
    if api_base:
        return f"a stand-in at {api_base}"
    return "Stripe test mode (STRIPE_SECRET_KEY): see the Stripe Dashboard"
