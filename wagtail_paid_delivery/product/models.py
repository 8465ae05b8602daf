"""The ready-made product page. Sites with their own base Page write these lines themselves."""

from django.db import models
from django.utils.translation import gettext_lazy as _
from modelcluster.fields import ParentalKey
from wagtail.models import Page

from wagtail_paid_delivery.models import AbstractProductFile, ProductPageMixin


# django-stubs cannot resolve the managers Wagtail builds at class creation (PageManager,
# the ParentalKey's related manager); they are Wagtail's, not ours.
class ProductPage(ProductPageMixin, Page):  # type: ignore[django-manager-missing]
    content_panels = Page.content_panels + ProductPageMixin.product_panels
    template = "wagtail_paid_delivery/product_page.html"

    class Meta:
        verbose_name = _("product page")
        verbose_name_plural = _("product pages")


class ProductFile(AbstractProductFile):
    page = ParentalKey(ProductPage, related_name="files", on_delete=models.CASCADE)
