"""The task cluster's heartbeat: proof that some django-q2 cluster is picking up work.

The every-minute sweep (``tasks.sweep``) records a beat; the dashboard (``stats``) warns when
the last one is older than :data:`STALE_AFTER`: then no cluster runs (or none reaches this
database), and webhook events, delivery emails and retries all wait.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from .models import ClusterHeartbeat

#: The sweep's beat (scheduled every minute).
SWEEP = "sweep"
#: A beat older than this means no cluster has run the sweep for several of its minutes.
STALE_AFTER = timedelta(minutes=5)


def beat(name: str = SWEEP, now: datetime | None = None) -> None:
    """Record that a cluster ran ``name`` just now (one row, updated in place)."""
    ClusterHeartbeat.objects.update_or_create(
        name=name, defaults={"beat_at": now or timezone.now()}
    )


def last_beat(name: str = SWEEP) -> datetime | None:
    """When a cluster last ran ``name``; None when none ever did."""
    return ClusterHeartbeat.objects.filter(name=name).values_list("beat_at", flat=True).first()


def is_stale(last: datetime | None, now: datetime | None = None) -> bool:
    """True when ``last`` (a beat, or None for never) is too old to trust a cluster is running."""
    return last is None or (now or timezone.now()) - last > STALE_AFTER
