"""The purchase lines the package does not log itself: a checkout started, a file served.

Logged to ``sandbox.shop``, which the sandbox settings send to the console's ``[shop]`` lines
(``logs.ShopHandler``). Connected in ``HomeConfig.ready``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from wagtail_paid_delivery.models import Purchase
from wagtail_paid_delivery.signals import download_served

logger = logging.getLogger("sandbox.shop")


@receiver(post_save, sender=Purchase, dispatch_uid="sandbox.shop.checkout_started")
def log_checkout_started(sender: type, instance: Purchase, created: bool, **kwargs: Any) -> None:
    if created and instance.source == Purchase.Source.CHECKOUT:
        logger.info(
            "Checkout started: %s, %s (purchase %s)",
            instance.product_title,
            instance.price_display,
            instance.public_id,
        )


@receiver(download_served, dispatch_uid="sandbox.shop.download_served")
def log_download_served(sender: type, link: Any, file: Any, **kwargs: Any) -> None:
    logger.info("Download served: %s (order %s)", file.title, link.purchase.order_number)
