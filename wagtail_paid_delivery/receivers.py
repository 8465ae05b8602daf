"""Signal receivers the app connects in ``AppConfig.ready``."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver
from wagtail.signals import page_published

from . import outbox, sale_notices, updates
from .models import ShopNotificationPreference
from .signals import purchase_paid

logger = logging.getLogger(__name__)

#: Dotted path of the task django-q2 runs for the delivery email.
DELIVERY_EMAIL_TASK = "wagtail_paid_delivery.tasks.send_delivery_email"


@receiver(purchase_paid, dispatch_uid="wagtail_paid_delivery.send_delivery_email")
def enqueue_delivery_email(sender: Any, purchase: Any, **kwargs: Any) -> None:
    # On commit: the task must see the paid purchase. The task itself is idempotent, so a
    # purchase_paid told twice still sends one email. The email was promised (recorded) with
    # the payment: if this enqueue is lost, the outbox's sweep sends it.
    # A dispute or refund needs no receiver here: links check the purchase's status at every use.
    if getattr(purchase, "bundle_id", None):
        return  # an included purchase's links travel in its bundle's delivery email
    pk = purchase.pk
    if outbox.delivery_sent_by_caller(purchase):
        return  # the paying task sends it right after its commit (inbox.process)
    transaction.on_commit(lambda: _enqueue(pk))


def _enqueue(purchase_pk: int) -> None:
    from django_q.tasks import async_task

    try:
        async_task(DELIVERY_EMAIL_TASK, purchase_pk, group="wagtail_paid_delivery.delivery_email")
    except Exception:
        # Not raised: the payment is committed and the other receivers must still run.
        logger.exception("Could not enqueue the delivery email of purchase %s", purchase_pk)


@receiver(page_published, dispatch_uid="wagtail_paid_delivery.update_notice")
def notice_on_publish(sender: Any, instance: Any, revision: Any = None, **kwargs: Any) -> None:
    # Sent for a publish from the editor and for a scheduled one (publish_scheduled); an alias
    # is the same product's page elsewhere, not a release.
    if kwargs.get("alias"):
        return
    user = kwargs.get("user") or getattr(revision, "user", None)
    updates.notice_for_publish(instance, revision, user)


def _forget_sale_notice_staff(sender: Any, **kwargs: Any) -> None:
    sale_notices.forget_staff()


# Who is told about new sales depends on these: a change forgets this process's cached list.
_User = get_user_model()
for _model in (_User, Group, Permission, ShopNotificationPreference):
    for _signal in (post_save, post_delete):
        _signal.connect(
            _forget_sale_notice_staff, sender=_model, dispatch_uid=f"wpd.staff.{_model}"
        )
for _through in (_User.groups.through, _User.user_permissions.through, Group.permissions.through):
    m2m_changed.connect(
        _forget_sale_notice_staff, sender=_through, dispatch_uid=f"wpd.staff.{_through}"
    )
