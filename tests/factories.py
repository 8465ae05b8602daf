"""factory-boy factories for every model; pages are created the Wagtail way, under a site root."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.utils import timezone
from factory.django import DjangoModelFactory
from wagtail.models import Page, Site

from tests.testapp.models import HomePage
from wagtail_paid_delivery.models import (
    DeliveryCopy,
    DownloadEvent,
    DownloadLink,
    FileDownloadCount,
    Purchase,
    StripeEvent,
)
from wagtail_paid_delivery.product.models import ProductFile, ProductPage


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("password")


class SuperuserFactory(UserFactory):
    is_staff = True
    is_superuser = True


class WagtailPageFactory(DjangoModelFactory):
    """Adds pages with ``parent.add_child`` so the tree (path, depth, numchild) stays right."""

    class Meta:
        abstract = True

    title = factory.Sequence(lambda n: f"Page {n}")

    @classmethod
    def _create(cls, model_class, *args, parent=None, **kwargs):
        parent = parent or home_page()
        instance = model_class(*args, **kwargs)
        parent.add_child(instance=instance)
        revision = instance.save_revision()
        if instance.live:
            revision.publish()
        return instance


def home_page() -> Page:
    """The site's home page (created on first use), child of Wagtail's root."""
    site = Site.objects.filter(is_default_site=True).first()
    if site and isinstance(site.root_page.specific, HomePage):
        return site.root_page.specific
    root = Page.get_first_root_node()
    home = HomePage(title="Shop", slug="shop-home")
    root.add_child(instance=home)
    Site.objects.update_or_create(
        is_default_site=True,
        defaults={"hostname": "testserver", "port": 80, "root_page": home, "site_name": "Shop"},
    )
    return home


class DeliveryCopyFactory(DjangoModelFactory):
    class Meta:
        model = DeliveryCopy

    name = factory.Sequence(lambda n: f"Copy {n}")


class ProductPageFactory(WagtailPageFactory):
    class Meta:
        model = ProductPage
        skip_postgeneration_save = True

    title = factory.Sequence(lambda n: f"Product {n}")
    intro = "A useful download."
    price_amount = 1250
    currency = "USD"

    @factory.post_generation
    def files(self, create, extracted, **kwargs):
        # ProductPageFactory(files=2) adds two files; the default is one.
        if not create:
            return
        for i in range(1 if extracted is None else extracted):
            ProductFileFactory(page=self, title=f"File {i + 1}")


class ProductFileFactory(DjangoModelFactory):
    class Meta:
        model = ProductFile

    page = factory.SubFactory(ProductPageFactory, files=0)
    title = factory.Sequence(lambda n: f"File {n}")
    file = factory.LazyAttribute(
        lambda o: ContentFile(f"contents of {o.title}\n".encode() * 10, name="guide.pdf")
    )


class PurchaseFactory(DjangoModelFactory):
    class Meta:
        model = Purchase

    product = factory.SubFactory(ProductPageFactory)
    product_title = factory.LazyAttribute(lambda o: o.product.title)
    amount = factory.LazyAttribute(lambda o: o.product.specific.price_amount)
    currency = factory.LazyAttribute(lambda o: o.product.specific.currency)
    email = factory.Sequence(lambda n: f"buyer{n}@example.com")
    stripe_checkout_session_id = factory.Sequence(lambda n: f"cs_test_{n:024d}")
    status = Purchase.Status.PENDING

    class Params:
        paid = factory.Trait(
            status=Purchase.Status.PAID,
            paid_at=factory.LazyFunction(timezone.now),
            stripe_payment_intent_id=factory.Sequence(lambda n: f"pi_test_{n:024d}"),
        )


class DownloadLinkFactory(DjangoModelFactory):
    class Meta:
        model = DownloadLink

    purchase = factory.SubFactory(PurchaseFactory, paid=True)
    token_hash = factory.Sequence(lambda n: hashlib.sha256(f"token-{n}".encode()).hexdigest())
    reason = DownloadLink.Reason.WEBHOOK
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(hours=24))
    download_limit = 5


class FileDownloadCountFactory(DjangoModelFactory):
    class Meta:
        model = FileDownloadCount

    link = factory.SubFactory(DownloadLinkFactory)
    file_id = factory.Sequence(int)
    count = 0


class DownloadEventFactory(DjangoModelFactory):
    class Meta:
        model = DownloadEvent

    link = factory.SubFactory(DownloadLinkFactory)
    outcome = "served"


class StripeEventFactory(DjangoModelFactory):
    class Meta:
        model = StripeEvent

    stripe_id = factory.Sequence(lambda n: f"evt_test_{n:024d}")
    type = "checkout.session.completed"
    payload = factory.LazyAttribute(
        lambda o: {"id": o.stripe_id, "object": "event", "type": o.type, "data": {"object": {}}}
    )


def page_editor(page: Page, *, username: str = "editor", permissions=("add", "change", "publish")):
    """A non-superuser who may use the Wagtail admin and has ``permissions`` on ``page``'s tree."""
    from django.contrib.auth.models import Group, Permission
    from wagtail.models import GroupPagePermission

    group, _ = Group.objects.get_or_create(name=f"{username} group")
    group.permissions.add(
        Permission.objects.get(content_type__app_label="wagtailadmin", codename="access_admin")
    )
    for permission_type in permissions:
        GroupPagePermission.objects.get_or_create(
            group=group,
            page=page,
            permission=Permission.objects.get(
                content_type__app_label=Page._meta.app_label,
                codename=f"{permission_type}_{Page._meta.model_name}",
            ),
        )
    user = UserFactory(username=username, is_staff=False)
    user.groups.add(group)
    return user
