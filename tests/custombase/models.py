"""The three lines the README asks of a site with its own base Page, against Wagtail's BasePage."""

from django.db import models
from modelcluster.fields import ParentalKey
from wagtail.test.basepage.models import BasePage

from wagtail_paid_delivery.models import AbstractProductFile, ProductPageMixin


class ProductPage(ProductPageMixin, BasePage):
    content_panels = BasePage.content_panels + ProductPageMixin.product_panels


class ProductFile(AbstractProductFile):
    page = ParentalKey(ProductPage, related_name="files", on_delete=models.CASCADE)
