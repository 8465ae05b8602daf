"""The django-q2 schedules this app needs, created (or brought up to date) after ``migrate``.

``sweep`` re-enqueues Stripe events due for another attempt or whose task was lost, every
minute; ``email_sweep`` does the same for promised emails (``outbox``), every minute;
``update_notices`` queues the due batches of update emails (``update_runs``), every minute;
``publish_scheduled`` (only with ``SCHEDULE_PUBLISHING``) runs Wagtail's command of that name,
every minute; ``reconcile`` stores the Stripe events the webhook missed (refunds, disputes, paid
sessions) and asks Stripe about due pending purchases, every ten minutes; ``cleanup`` removes
records past their ``RETENTION`` period, once a day. They are upserted by name, so a site never
adds them by hand, and a changed interval here reaches every site on its next ``migrate``.
``WAGTAIL_PAID_DELIVERY["SCHEDULES"] = False`` leaves them alone (and removes nothing a site
made itself).
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

from .conf import app_settings

logger = logging.getLogger(__name__)

#: name → (task function, interval in minutes).
SCHEDULES: dict[str, tuple[str, int]] = {
    "wagtail_paid_delivery.sweep": ("wagtail_paid_delivery.tasks.sweep", 1),
    "wagtail_paid_delivery.email_sweep": ("wagtail_paid_delivery.tasks.sweep_emails", 1),
    "wagtail_paid_delivery.reconcile": ("wagtail_paid_delivery.tasks.reconcile", 10),
    "wagtail_paid_delivery.cleanup": ("wagtail_paid_delivery.tasks.cleanup", 24 * 60),
    "wagtail_paid_delivery.update_notices": ("wagtail_paid_delivery.tasks.update_notices", 1),
}
#: Only with ``SCHEDULE_PUBLISHING``: Wagtail's scheduled publishing, without cron.
PUBLISHING: dict[str, tuple[str, int]] = {
    "wagtail_paid_delivery.publish_scheduled": ("wagtail_paid_delivery.tasks.publish_scheduled", 1),
}


def wanted_schedules() -> dict[str, tuple[str, int]]:
    """The schedules this site should have now."""
    return {**SCHEDULES, **(PUBLISHING if app_settings.SCHEDULE_PUBLISHING is True else {})}


def ensure_schedules(*, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """Create or update the app's django-q2 schedules (a ``post_migrate`` receiver)."""
    if not app_settings.SCHEDULES or not global_apps.is_installed("django_q"):
        return
    from django.db import connections
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return  # django_q's own migrations have not run on this database (yet)
    if app_settings.SCHEDULE_PUBLISHING is not True:
        # Turned off: ours goes (a site that runs publish_scheduled from cron must not run it
        # twice).
        Schedule.objects.using(using).filter(name__in=list(PUBLISHING)).delete()
    for name, (func, minutes) in wanted_schedules().items():
        wanted = {
            "func": func,
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        }
        existing = Schedule.objects.using(using).filter(name=name).order_by("pk")
        schedule = existing.first()
        if schedule is None:
            Schedule.objects.using(using).create(name=name, **wanted)
            logger.info("Created django-q2 schedule %s", name)
            continue
        # Duplicates (an old manual copy) would run the task twice as often.
        existing.exclude(pk=schedule.pk).delete()
        changed = [k for k, v in wanted.items() if getattr(schedule, k) != v]
        if changed:
            for key in changed:
                setattr(schedule, key, wanted[key])
            schedule.save(using=using, update_fields=changed)
