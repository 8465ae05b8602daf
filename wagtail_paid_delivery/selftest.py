"""The delivery self-test: is this site set up so that buyers get their files and nobody else
does? Run by ``manage.py delivery_selftest``.

Each check answers a ``Result`` (OK or FAIL, what was seen, a hint). The HTTP probes make real
requests to the site's own base URL, so they must run outside the web request they would wait
on (the command, or a task): a single-worker server asked from one of its own requests would
wait for itself.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from django.conf import settings
from django.core import checks
from django.core.files.base import ContentFile
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from . import inbox, outbox, stripe_api
from .conf import app_settings
from .models import OutboundEmail, StripeEvent
from .schedules import wanted_schedules
from .storage import get_product_storage, storage_errors

#: How long one probe may take (seconds).
PROBE_TIMEOUT = 10
#: Where the probe file is written in product storage (a random name below it).
PROBE_FOLDER = "selftest"


@dataclass(frozen=True)
class Result:
    #: What was checked, in a few words.
    name: str
    ok: bool
    #: What was seen.
    detail: str
    #: What to do about it (FAIL only).
    hint: str = ""


def system_checks() -> Result:
    """Django's system checks (ours included) report no error."""
    messages = checks.run_checks()
    errors = [m for m in messages if m.level >= checks.ERROR]
    ours = [m for m in messages if str(m.id or "").startswith("wagtail_paid_delivery.")]
    if errors:
        return Result(
            "Settings and system checks",
            False,
            "; ".join(f"{m.id}: {m.msg}" for m in errors),
            "Run `manage.py check` and fix the errors it lists.",
        )
    detail = f"no errors ({len(ours)} warnings of ours)" if ours else "no errors"
    return Result("Settings and system checks", True, detail)


def _fetch(url: str) -> tuple[int, str, bytes]:
    """GET ``url`` as a stranger (no cookies), following redirects; (status, final URL, first
    bytes)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an HTTP URL: {url}")
    # The scheme is checked above: S310 is about file: and custom schemes.
    request = urllib.request.Request(  # noqa: S310
        url, headers={"User-Agent": "wagtail-paid-delivery selftest"}
    )
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:  # noqa: S310
            return response.status, response.geturl(), response.read(1 << 16)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.geturl() or url, exc.read(1 << 16)


def _unsigned(url: str) -> str:
    """``url`` without its query string: a presigned URL stripped of its signature."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def probe_urls(base_url: str, name: str, storage_url: str) -> dict[str, str]:
    """The public ways a private file could be reached: label → absolute URL."""
    urls = {
        "MEDIA_URL": urljoin(base_url, str(settings.MEDIA_URL or "/media/") + name),
        "STATIC_URL": urljoin(base_url, str(settings.STATIC_URL or "/static/") + name),
        "the storage's unsigned url()": urljoin(base_url, _unsigned(storage_url)),
    }
    if app_settings.SERVE_BACKEND == "nginx":
        prefix = str(app_settings.NGINX_INTERNAL_PREFIX or "/_paid_files/")
        urls["the nginx internal location"] = urljoin(base_url, prefix + name)
    return urls


def private_file_probe(base_url: str) -> list[Result]:
    """Write a secret test file to product storage and ask for it over HTTP every public way;
    none may answer with its bytes. The file is removed afterwards."""
    storage = get_product_storage()
    secret = secrets.token_hex(24).encode()
    name = storage.save(
        f"{PROBE_FOLDER}/{secrets.token_hex(8)}/probe.txt", ContentFile(b"selftest " + secret)
    )
    try:
        return [
            _probe_one(label, url, secret)
            for label, url in probe_urls(base_url, name, storage.url(name)).items()
        ]
    finally:
        storage.delete(name)


def _probe_one(label: str, url: str, secret: bytes) -> Result:
    title = f"Private file not reachable through {label}"
    try:
        status, final, body = _fetch(url)
    except (OSError, ValueError) as exc:
        return Result(
            title,
            False,
            f"{url}: could not ask ({exc})",
            "Give the site's own base URL (--base-url, or WAGTAILADMIN_BASE_URL) and run this "
            "where that URL is reachable.",
        )
    if secret in body:
        return Result(
            title,
            False,
            f"{url} answered {status} with the file's bytes",
            "Product files must live outside MEDIA_ROOT and STATIC_ROOT (PRIVATE_STORAGE_ROOT "
            "elsewhere), with a storage whose url() serves nothing publicly; with nginx, mark "
            "the offload location `internal;`.",
        )
    where = "" if final == url else f" (redirected to {final})"
    return Result(title, True, f"{url} answered {status}{where} without the file")


def object_storage_probe() -> Result | None:
    """On a remote product storage (S3 and the like, whose url() is absolute), write a secret
    probe object and ask for it as a stranger: its plain URL (the presigned one stripped of its
    signature) must not answer with its bytes, and its ACL must grant nobody but the owner.
    None for a storage on this site (the HTTP probes cover it). The object is removed
    afterwards."""
    storage = get_product_storage()
    title = "Product storage: an uploaded object is not readable anonymously"
    name = f"{PROBE_FOLDER}/{secrets.token_hex(8)}/probe.txt"
    if urlsplit(storage.url(name)).scheme not in ("http", "https"):
        return None
    secret = secrets.token_hex(24).encode()
    try:
        name = storage.save(name, ContentFile(b"selftest " + secret))
    except storage_errors() as exc:
        return Result(title, False, f"could not write a probe: {exc}", _STORAGE_HINT)
    try:
        url = _unsigned(storage.url(name))
        try:
            status, _final, body = _fetch(url)
        except (OSError, ValueError) as exc:
            return Result(title, False, f"{url}: could not ask ({exc})", _STORAGE_HINT)
        if secret in body:
            return Result(
                title, False, f"{url} answered {status} with the object's bytes", _STORAGE_HINT
            )
        public = _public_grants(storage, name)
        if public:
            return Result(title, False, f"{name}'s ACL grants {public}", _STORAGE_HINT)
        return Result(title, True, f"{url} answered {status} without the object")
    finally:
        storage.delete(name)


_STORAGE_HINT = (
    "Keep the bucket private: no public-read default_acl or object ACL, no bucket policy that "
    "allows anonymous GetObject, and S3 Block Public Access on; buyers get presigned URLs."
)

#: Grantees that make an S3 object readable beyond its owner.
_PUBLIC_GRANTEES = (
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
)


def _public_grants(storage: Any, name: str) -> str:
    """The object's ACL grants to everyone (django-storages' S3Storage, whose files carry their
    boto3 object as ``obj``); "" when none, or when the storage keeps no ACLs (the anonymous GET
    is then the answer)."""
    try:
        with storage.open(name, "rb") as handle:
            s3_object = getattr(handle, "obj", None)
            grants = s3_object.Acl().grants if s3_object is not None else []
    except storage_errors():  # ACLs disabled, or not readable with these credentials
        return ""
    return ", ".join(
        f"{grant['Permission']} to {grant['Grantee']['URI'].rsplit('/', 1)[-1]}"
        for grant in grants
        if grant.get("Grantee", {}).get("URI") in _PUBLIC_GRANTEES
    )


def schedules_exist() -> Result:
    """The sweep, reconcile and cleanup schedules are in django-q2's Schedule table."""
    from django_q.models import Schedule

    funcs = set(Schedule.objects.values_list("func", flat=True))
    missing = [name for name, (func, _minutes) in wanted_schedules().items() if func not in funcs]
    if missing:
        return Result(
            "Schedules exist",
            False,
            "missing: " + ", ".join(missing),
            "Run `manage.py migrate` (it creates them unless SCHEDULES is False), and keep a "
            "`manage.py qcluster` running.",
        )
    return Result("Schedules exist", True, f"{len(wanted_schedules())} schedules")


def inbox_not_stuck() -> Result:
    """No Stripe event waits longer than ``inbox.STUCK_AFTER`` or has failed for good."""
    now = timezone.now()
    stuck = StripeEvent.objects.filter(
        status=StripeEvent.Status.RECEIVED, received_at__lte=now - inbox.STUCK_AFTER
    )
    max_attempts = int(app_settings.MAX_EVENT_ATTEMPTS)
    failed_for_good = StripeEvent.objects.filter(status=StripeEvent.Status.FAILED).filter(
        Q(attempts__gte=max_attempts) | Q(next_attempt_at__isnull=True)
    )
    counts = {"waiting": stuck.count(), "failed for good": failed_for_good.count()}
    if any(counts.values()):
        return Result(
            "No Stripe event stuck",
            False,
            ", ".join(f"{n} {what}" for what, n in counts.items() if n),
            "Check that `manage.py qcluster` runs; read the events' last error; "
            "`manage.py reprocess` runs them again once the cause is fixed.",
        )
    retrying = StripeEvent.objects.filter(
        status=StripeEvent.Status.FAILED, attempts__lt=max_attempts
    ).exclude(next_attempt_at=None)
    detail = f"none ({retrying.count()} retrying)" if retrying.exists() else "none"
    return Result("No Stripe event stuck", True, detail)


def stripe_account() -> Result:
    """Stripe answers with the configured secret key."""
    try:
        account = stripe_api.retrieve_account()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer we report
        return Result(
            "Stripe answers with the configured key",
            False,
            f"{type(exc).__name__}: {exc}",
            "Check STRIPE_SECRET_KEY (a restricted key needs read access to the account and "
            "webhook endpoints) and that this host can reach api.stripe.com.",
        )
    mode = stripe_api.key_mode(app_settings.STRIPE_SECRET_KEY)
    return Result("Stripe answers with the configured key", True, f"account {account.id} ({mode})")


def webhook_url(base_url: str) -> str:
    return urljoin(base_url, reverse("wagtail_paid_delivery:stripe_webhook"))


def stripe_webhook_endpoint(base_url: str) -> Result:
    """An enabled endpoint on file points at this site's webhook URL with every event type we
    handle."""
    title = "Stripe sends our events to this site"
    wanted = webhook_url(base_url)
    try:
        endpoints = stripe_api.list_webhook_endpoints()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer we report
        return Result(title, False, f"{type(exc).__name__}: {exc}", "Check STRIPE_SECRET_KEY.")
    ours = [e for e in endpoints if e.url == wanted and e.status == "enabled"]
    if not ours:
        return Result(
            title,
            False,
            f"no enabled endpoint for {wanted} (on file: "
            + (", ".join(e.url for e in endpoints) or "none")
            + ")",
            "Add an endpoint for this URL in Stripe's dashboard (Developers > Webhooks).",
        )
    best = min(ours, key=lambda e: len(_missing_types(e)))
    missing = _missing_types(best)
    if missing:
        return Result(
            title,
            False,
            f"{wanted} lacks: " + ", ".join(sorted(missing)),
            "Add these event types to the endpoint in Stripe's dashboard.",
        )
    return Result(title, True, f"{wanted} ({best.id})")


def _missing_types(endpoint: Any) -> set[str]:
    enabled = set(endpoint.enabled_events or [])
    return set() if "*" in enabled else set(inbox.HANDLED_EVENT_TYPES) - enabled


def base_url_or_default(base_url: str | None) -> str | None:
    """The site's own base URL: given, or ``WAGTAILADMIN_BASE_URL``."""
    value = base_url or getattr(settings, "WAGTAILADMIN_BASE_URL", "") or None
    return value.rstrip("/") + "/" if value else None


def run(base_url: str | None, *, with_stripe: bool = False) -> list[Result]:
    """Every check, in order; ``base_url`` is where the site answers HTTP."""
    results = [system_checks()]
    base = base_url_or_default(base_url)
    if base is None:
        results.append(
            Result(
                "Private files probed over HTTP",
                False,
                "no base URL to probe",
                "Pass --base-url https://your.site/ or set WAGTAILADMIN_BASE_URL.",
            )
        )
    else:
        results.extend(private_file_probe(base))
    remote = object_storage_probe()
    if remote is not None:
        results.append(remote)
    steps: list[Callable[[], Result]] = [schedules_exist, inbox_not_stuck, outbox_not_stuck]
    if with_stripe:
        steps.append(stripe_account)
        if base is not None:
            steps.append(lambda: stripe_webhook_endpoint(base))
    results.extend(step() for step in steps)
    return results


def outbox_not_stuck() -> Result:
    """No email to a buyer lost its task (untried ``outbox.STUCK_AFTER`` after it was
    recorded) or failed every attempt."""
    now = timezone.now()
    pending = OutboundEmail.objects.filter(status=OutboundEmail.Status.PENDING)
    lost = pending.filter(attempts=0, created_at__lte=now - outbox.STUCK_AFTER)
    lost = lost.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    failed = OutboundEmail.objects.filter(status=OutboundEmail.Status.FAILED)
    counts = {"waiting": lost.count(), "failed for good": failed.count()}
    if any(counts.values()):
        return Result(
            "No email stuck",
            False,
            ", ".join(f"{n} {what}" for what, n in counts.items() if n),
            "Check that `manage.py qcluster` runs (the email sweep) and that the mail settings "
            "work; each email's last error is on its purchase's timeline in the shop desk.",
        )
    retrying = pending.filter(attempts__gt=0).count()
    return Result("No email stuck", True, f"none ({retrying} retrying)" if retrying else "none")


# The admin page's side: checks that need no HTTP, and the probe run as a task ----------------

#: The django-q2 task that runs every check (``tasks.delivery_selftest``).
TASK = "wagtail_paid_delivery.tasks.delivery_selftest"


def local_checks() -> list[Result]:
    """The checks a web request may run itself (no HTTP request to the site)."""
    return [system_checks(), schedules_exist(), inbox_not_stuck(), outbox_not_stuck()]


def as_dicts(results: list[Result]) -> list[dict[str, Any]]:
    """Results as plain data, as a task stores them."""
    return [asdict(r) for r in results]


def enqueue(*, with_stripe: bool = False) -> str:
    """Queue a full run (the HTTP probes included) for the task cluster; returns the task id."""
    from django_q.tasks import async_task

    # save=True: its result is the report the page shows, kept even where successful results
    # are not (Q_CLUSTER["save_limit"] = -1, as README's deployment settings suggest).
    return str(async_task(TASK, with_stripe=with_stripe, group=TASK, save=True))


@dataclass(frozen=True)
class LastRun:
    finished: Any
    #: False when the task itself raised (``results`` then holds its error).
    completed: bool
    results: list[Result]


def last_run() -> LastRun | None:
    """The newest finished run of ``TASK`` that django-q2 keeps (``Q_CLUSTER["save_limit"]``)."""
    from django_q.models import Task

    task = Task.objects.filter(func=TASK).order_by("-stopped").first()
    if task is None:
        return None
    if not task.success or not isinstance(task.result, list):
        failure = Result("The self-test task", False, str(task.result), "Read the task's log.")
        return LastRun(task.stopped, False, [failure])
    return LastRun(task.stopped, True, [Result(**r) for r in task.result])
