"""Signal receivers the app connects in ``AppConfig.ready``."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.dispatch import receiver

from .signals import purchase_paid

#: Dotted path of the task django-q2 runs for the delivery email.
DELIVERY_EMAIL_TASK = "wagtail_paid_delivery.tasks.send_delivery_email"


@receiver(purchase_paid, dispatch_uid="wagtail_paid_delivery.send_delivery_email")
def enqueue_delivery_email(sender: Any, purchase: Any, **kwargs: Any) -> None:
    # On commit: the task must see the paid purchase. The task itself is idempotent, so a
    # purchase_paid told twice still sends one email.
    # A dispute or refund needs no receiver here: links check the purchase's status at every use.
    from django_q.tasks import async_task

    pk = purchase.pk
    transaction.on_commit(
        lambda: async_task(DELIVERY_EMAIL_TASK, pk, group="wagtail_paid_delivery.delivery_email")
    )
