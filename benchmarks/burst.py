"""A launch-day burst, end to end: webhooks at once, a real cluster, Stripe's emulator as Stripe.

    python benchmarks/burst.py [--purchases 1000 | --quick] [--delay-ms MS] [--workers N]
                               [--broker orm|redis] [--clients 16] [--profile]

N pending purchases (checked out through the shop's Buy view, each with its session at the
emulator) are paid at the emulator; their ``checkout.session.completed`` events, signed with
Stripe's scheme, are then posted at once by a pool of keep-alive clients, with 10 % sent twice
(Stripe's retries) and about a tenth swapped out of order, to the shop in gunicorn on
PostgreSQL, while a django-q2 cluster (``manage.py qcluster``) fulfils them and sends the
delivery emails (the file mail backend) through the emulator in a second gunicorn.

It prints webhook acknowledgements per second, purchases paid and fulfilled (delivery email
written) per second, p50/p99 from each purchase's first webhook arrival (``StripeEvent
.received_at``) to its delivery email's ``sent_at``, the CPU the shop spent per webhook and the
cluster and the emulator per purchase (which the machine's load changes less than the rates),
and asserts every purchase paid once with one delivery email. Without ``--delay-ms`` it makes
two runs, the emulator answering at once (target: fulfilled/s >= 0.4 x acknowledged/s) and
answering each call after 250 ms (target: p99 payment-to-email < 60 s), the second with
``--delayed-workers`` cluster workers.

``--profile`` instead runs the paying task in process (cProfile, CPU time), with the emulator in
gunicorn as Stripe and the benchmark's settings: ``--purchases`` events stored as the webhook
stores them, 5 run first to warm up, then half timed without the profiler and half profiled;
it prints the CPU per task, our functions' share of it and the statements of one task.

The processes come from tests/processes.py (each in its own process group, all killed at the
end); their settings are benchmarks/settings_burst.py. The database (``--database-url``,
PostgreSQL) is dropped and created for each run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.processes import (  # noqa: E402
    Processes,
    delete_redis_queue,
    free_port,
    redis_answers,
    started,
    wait_for,
)
from tests.stripe_fake import sign_payload  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/wpd_bench_burst"
#: The Redis database of the Redis-broker runs (each run names its own queue).
REDIS_URL = os.environ.get("WPD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
WEBHOOK_PATH = "/shop/stripe/webhook/"
SECRET = "whsec_tests"
DUPLICATES = 0.10
OUT_OF_ORDER = 0.10


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class Poster(threading.local):
    """One keep-alive connection per client thread, posting signed events to the webhook."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, payload: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": sign_payload(payload, SECRET),
        }
        try:
            self.conn.request("POST", WEBHOOK_PATH, body=payload, headers=headers)
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0


def deliveries(events: list[bytes], rng: random.Random) -> list[bytes]:
    """The order Stripe sends them in: a tenth swapped with a neighbour, a tenth sent twice."""
    order = list(events)
    for _ in range(int(len(order) * OUT_OF_ORDER / 2)):
        i = rng.randrange(len(order) - 1)
        order[i], order[i + 1] = order[i + 1], order[i]
    for payload in rng.sample(events, int(len(events) * DUPLICATES)):
        # The retry comes later than the first delivery, as Stripe's do.
        first = order.index(payload)
        order.insert(rng.randrange(first + 1, len(order) + 1), payload)
    return order


def prepare_shop(count: int, checkout_threads: int = 4) -> dict[int, bytes]:
    """Checkouts through the Buy view, then payment at the emulator: purchase pk -> event."""
    from django.db import connections
    from django.test import Client
    from django.urls import reverse

    from sandbox.stripe_emulator import actions, webhooks
    from tests.factories import ProductPageFactory, home_page
    from wagtail_paid_delivery.models import Purchase

    product = ProductPageFactory(parent=home_page(), title="Launch guide", price_amount=1250)
    url = reverse("wagtail_paid_delivery:checkout", args=[product.pk])

    def buy(_: int) -> None:
        response = Client().post(url, HTTP_ORIGIN="http://testserver")
        assert response.status_code == 303, response.content
        connections.close_all()

    with ThreadPoolExecutor(checkout_threads) as pool:
        list(pool.map(buy, range(count)))
    events: dict[int, bytes] = {}
    for i, purchase in enumerate(Purchase.objects.order_by("pk")):
        _, made = actions.perform(
            purchase.stripe_checkout_session_id, "pay", {"email": f"buyer{i}@example.com"}
        )
        (obj,) = [obj for type_, obj in made if type_ == "checkout.session.completed"]
        event = webhooks.make_event(obj, "checkout.session.completed")
        events[purchase.pk] = json.dumps(event).encode()
    assert len(events) == count
    return events


def mails_by_message_id(mail_dir: Path) -> dict[str, list[str]]:
    """Recipients of each message the file backend wrote, by Message-ID."""
    import email

    found: dict[str, list[str]] = {}
    for path in sorted(mail_dir.iterdir()) if mail_dir.is_dir() else []:
        for chunk in path.read_text().split("\n" + "-" * 79 + "\n"):
            if chunk.strip():
                message = email.message_from_string(chunk)
                found.setdefault(message["Message-ID"], []).append(message["To"])
    return found


def check_each_paid_once(count: int, mail_dir: Path) -> None:
    from wagtail_paid_delivery.models import OutboundEmail, Purchase, StripeEvent

    statuses = set(Purchase.objects.values_list("status", flat=True))
    assert statuses == {Purchase.Status.PAID}, statuses
    assert Purchase.objects.filter(paid_at__isnull=False).count() == count
    assert StripeEvent.objects.count() == count, "a duplicate was stored twice"
    assert set(StripeEvent.objects.values_list("status", flat=True)) == {"processed"}
    rows = list(OutboundEmail.objects.filter(kind="delivery"))
    assert len(rows) == count and len({r.purchase_id for r in rows}) == count
    assert all(r.status == OutboundEmail.Status.SENT for r in rows)
    written = mails_by_message_id(mail_dir)
    emails = {p.pk: p.email for p in Purchase.objects.all()}
    for row in rows:
        copies = written.get(row.message_id, [])
        assert len(copies) == 1, (row.purchase_id, len(copies))
        assert copies == [emails[row.purchase_id]]
    assert OutboundEmail.objects.filter(kind="delivery").count() == count


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by a process group's live processes and the children they reaped
    (gunicorn's and django-q2's recycled workers). Unlike rates, it does not depend on what
    else the machine runs. PostgreSQL's own processes are not counted."""
    total = sum(sum(int(v) for v in fields[11:15]) for _, fields in group_stats(pgid))
    return total / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


def group_stats(pgid: int) -> Iterator[tuple[int, list[str]]]:
    """Each live process of group ``pgid``: its pid and the fields of /proc/<pid>/stat after
    the command name (so ``fields[1]`` is the parent, ``fields[2]`` the group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            yield int(stat.parent.name), fields


def cluster_split(pgid: int) -> dict[str, float]:
    """CPU seconds of the cluster's processes by role: its workers (the tasks, with those
    django-q2 recycled after ``recycle`` tasks, whose CPU the sentinel reaped), and django-q2's
    own pusher (dequeue, unpickling, signature check), monitor (acknowledgements) and the
    qcluster and sentinel processes. django-q2's sentinel starts the workers first, then the
    monitor, then the pusher, at once: of its children started in that first second, the last
    two are those (a recycled worker starts later)."""
    procs: dict[int, tuple[int, int, float, float]] = {}  # ppid, start, own CPU, reaped CPU
    tick = os.sysconf("SC_CLK_TCK")
    for pid, fields in group_stats(pgid):
        own = sum(int(v) for v in fields[11:13]) / tick
        reaped = sum(int(v) for v in fields[13:15]) / tick
        procs[pid] = (int(fields[1]), int(fields[19]), own, reaped)
    split = {"workers": 0.0, "monitor": 0.0, "pusher": 0.0, "sentinel": 0.0}
    sentinels = [pid for pid, values in procs.items() if values[0] == pgid]
    for pid, (_, _, own, reaped) in procs.items():
        if pid == pgid or pid in sentinels:
            split["sentinel"] += own
            split["workers" if pid in sentinels else "sentinel"] += reaped
    for sentinel in sentinels:
        children = sorted(pid for pid, values in procs.items() if values[0] == sentinel)
        first = min((procs[pid][1] for pid in children), default=0)
        initial = [pid for pid in children if procs[pid][1] <= first + tick]
        for role, pid in zip(("pusher", "monitor"), reversed(initial), strict=False):
            split[role] += sum(procs[pid][2:])
        for pid in set(children) - set(initial[-2:]):
            split["workers"] += sum(procs[pid][2:])
    return split


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * share))]


def measure(count: int, start: float, acked_at: float, posted: int) -> dict[str, float]:
    from wagtail_paid_delivery.models import OutboundEmail, Purchase, StripeEvent

    arrived = dict(StripeEvent.objects.values_list("purchase_id", "received_at"))
    sent = dict(OutboundEmail.objects.filter(kind="delivery").values_list("purchase_id", "sent_at"))
    paid_at = dict(Purchase.objects.values_list("pk", "paid_at"))
    paid = [p.timestamp() for p in paid_at.values()]
    waits = sorted((sent[pk] - arrived[pk]).total_seconds() for pk in sent)
    # Where the wait goes: before the purchase is paid (the event's queue and task), after it
    # (the email's queue and task).
    to_paid = [(paid_at[pk] - arrived[pk]).total_seconds() for pk in sent]
    to_email = [(sent[pk] - paid_at[pk]).total_seconds() for pk in sent]
    last_email = max(s.timestamp() for s in sent.values())
    return {
        "acks": posted / (acked_at - start),
        "paid": count / (max(paid) - start),
        "fulfilled": count / (last_email - start),
        "p50": statistics.median(waits),
        "p99": percentile(waits, 0.99),
        "max": waits[-1],
        "to_paid": statistics.median(to_paid),
        "to_email": statistics.median(to_email),
        "total": last_email - start,
    }


def run(args: argparse.Namespace, delay_ms: int, workers: int) -> dict[str, float]:
    from django.db import connections

    from wagtail_paid_delivery.models import OutboundEmail

    connections.close_all()
    recreate_database(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="wpd-burst-"))
    (tmp / "logs").mkdir()
    mail = tmp / "mail"
    queue = f"burst-{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "WPD_FAULT_MAIL_DIR": str(mail),
        "WPD_Q_NAME": queue,
        "WPD_BURST_WORKERS": str(workers),
        "STRIPE_EMULATOR_DELAY_MS": "0",
    }
    with started(env, tmp / "logs") as processes:
        done = processes.manage("migrate", "--noinput", timeout=300)
        assert done.returncode == 0, done.stderr
        shop = processes.gunicorn(args.shop_port, "shop")
        stripe = processes.gunicorn(args.stripe_port, "stripe")
        t = time.monotonic()
        events = prepare_shop(args.purchases)
        print(f"  {args.purchases} purchases checked out and paid in {time.monotonic() - t:.0f} s")
        if delay_ms:
            # "Stripe" answers each call after the delay from now on (checkouts went quickly).
            stripe.kill()
            slow = Processes({**env, "STRIPE_EMULATOR_DELAY_MS": str(delay_ms)}, tmp / "logs")
            stripe = slow.gunicorn(args.stripe_port, "stripe-slow")
            processes.groups.append(stripe)
        cluster = processes.start("cluster", [sys.executable, "-m", "django", "qcluster"])
        wait_for(processes.says(cluster, "running"), 60, every=0.05)

        order = deliveries(list(events.values()), random.Random(15))
        poster = Poster(args.shop_port)
        groups = {"shop": shop, "cluster": cluster, "stripe": stripe}
        cpu_before = {name: group_cpu(group.pgid) for name, group in groups.items()}
        split_before = cluster_split(cluster.pgid)
        start = time.time()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(poster.post, order))
        acked_at = time.time()
        assert answers == [200] * len(order), sorted(set(answers))

        def all_sent() -> bool:
            """every delivery email sent"""
            sent = OutboundEmail.objects.filter(kind="delivery", status="sent").count()
            return sent >= args.purchases

        wait_for(all_sent, 1800, every=0.25)
        cpu = {name: group_cpu(g.pgid) - cpu_before[name] for name, g in groups.items()}
        split = {k: v - split_before[k] for k, v in cluster_split(cluster.pgid).items()}
        time.sleep(1)  # a second delivery of anything would show now
        check_each_paid_once(args.purchases, mail)
        figures = measure(args.purchases, start, acked_at, len(order))
        # CPU per webhook (the shop; it serves nothing else meanwhile) and per purchase.
        figures["cpu_ack"] = cpu["shop"] / len(order) * 1000
        figures["cpu_cluster"] = cpu["cluster"] / args.purchases * 1000
        figures["cpu_stripe"] = cpu["stripe"] / args.purchases * 1000
        for role, seconds in split.items():
            figures[f"cpu_{role}"] = seconds / args.purchases * 1000
    connections.close_all()
    if args.broker == "redis":
        delete_redis_queue(REDIS_URL, queue)
    return figures


def profile(args: argparse.Namespace) -> None:
    """The paying task in process: CPU per task, the profile's shares, one task's statements."""
    import cProfile
    import io
    import pstats

    from django.db import close_old_connections, connection, connections
    from django.test.utils import CaptureQueriesContext

    from wagtail_paid_delivery import inbox, tasks

    connections.close_all()
    recreate_database(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="wpd-burst-profile-"))
    (tmp / "logs").mkdir()
    env = {**os.environ, "STRIPE_EMULATOR_DELAY_MS": "0"}
    with started(env, tmp / "logs") as processes:
        done = processes.manage("migrate", "--noinput", timeout=300)
        assert done.returncode == 0, done.stderr
        processes.gunicorn(args.stripe_port, "stripe")
        ids = []
        for payload in prepare_shop(args.purchases + 6).values():
            event = json.loads(payload)
            inbox.store(event)
            ids.append(event["id"])

        def run(event_id: str) -> None:
            close_old_connections()  # as django-q2's worker does before each task
            assert tasks.process_stripe_event(event_id) == "fulfilled"

        for event_id in ids[:5]:
            run(event_id)
        half = (len(ids) - 6) // 2
        started_cpu = time.process_time()
        for event_id in ids[5 : 5 + half]:
            run(event_id)
        cpu = (time.process_time() - started_cpu) / half * 1000
        profiler = cProfile.Profile(time.process_time)
        for event_id in ids[5 + half : -1]:
            profiler.enable()
            run(event_id)
            profiler.disable()
        with CaptureQueriesContext(connection) as queries:
            run(ids[-1])
    connections.close_all()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"CPU per paying task: {cpu:.1f} ms ({half} tasks, no profiler)")
    print("Share of the profiled tasks' CPU, our functions and Wagtail's (cumulative):")
    rows = stats.stats  # type: ignore[attr-defined]
    ours = [
        (cumulative, f"{Path(file).name}:{line} {name}")
        for (file, line, name), (_, _, _, cumulative, _) in rows.items()
        if "wagtail_paid_delivery" in file or "wagtail/models" in file
    ]
    for cumulative, where in sorted(ours, reverse=True)[:40]:
        print(f"  {cumulative / total:6.1%}  {where}")
    print(f"{len(queries.captured_queries)} statements in one paying task:")
    for query in queries.captured_queries:
        print(f"  {query['sql'][:110]}")


def report(label: str, figures: dict[str, float], delay_ms: int, workers: int) -> None:
    ratio = figures["fulfilled"] / figures["acks"]
    print(f"\n== {label}: Stripe answers after {delay_ms} ms, cluster of {workers} workers")
    print(f"  webhook acknowledgements/s   {figures['acks']:8.1f}")
    print(f"  purchases paid/s             {figures['paid']:8.1f}")
    print(f"  purchases fulfilled/s        {figures['fulfilled']:8.1f}  (delivery email written)")
    print(f"  fulfilled/acknowledged       {ratio:8.2f}")
    print(f"  webhook arrival -> email     p50 {figures['p50']:.1f} s, p99 {figures['p99']:.1f} s")
    print(
        f"  of which, medians: arrival -> paid {figures['to_paid']:.1f} s, "
        f"paid -> email {figures['to_email']:.1f} s"
    )
    print(f"  whole burst, first post to last email {figures['total']:.1f} s")
    print(
        f"  CPU: {figures['cpu_ack']:.0f} ms per webhook in the shop; per purchase "
        f"{figures['cpu_cluster']:.0f} ms in the cluster, {figures['cpu_stripe']:.0f} ms in the "
        f"Stripe emulator (same cores); cost ratio webhook / purchase "
        f"{figures['cpu_ack'] / (figures['cpu_cluster'] + figures['cpu_stripe']):.2f}"
    )
    print(
        f"  of the cluster's: workers {figures['cpu_workers']:.0f} ms, django-q2's pusher "
        f"{figures['cpu_pusher']:.0f} ms, monitor {figures['cpu_monitor']:.0f} ms, qcluster and "
        f"sentinel {figures['cpu_sentinel']:.0f} ms"
    )
    print("  every purchase paid once, one delivery email each: OK")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 purchases")
    parser.add_argument("--delay-ms", type=int, help="one run with this delay per Stripe call")
    parser.add_argument("--workers", type=int, default=2, help="cluster workers (undelayed run)")
    parser.add_argument(
        "--delayed-workers", type=int, default=16, help="cluster workers (the 250 ms run)"
    )
    parser.add_argument("--broker", choices=["orm", "redis"], default="orm")
    parser.add_argument("--clients", type=int, default=16, help="posting threads")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--profile", action="store_true", help="profile the paying task instead")
    args = parser.parse_args()
    if args.quick:
        args.purchases = 100
    return args


def main() -> int:
    args = parse()
    args.shop_port, args.stripe_port = free_port(), free_port()
    stripe_base = f"http://127.0.0.1:{args.stripe_port}/stripe-emulator"
    files = Path(tempfile.mkdtemp(prefix="wpd-burst-files-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings_burst",
            "DATABASE_URL": args.database_url,
            "WPD_Q_SYNC": "0",
            "WPD_Q_NAME": "burst-driver",
            "WPD_FAULT_PRIVATE_ROOT": str(files),
            "WPD_FAULT_MAIL_DIR": str(files / "mail"),
            "WPD_FAULT_STRIPE_API_BASE": stripe_base,
            "WPD_FAULT_WEBHOOK_URL": f"http://127.0.0.1:{args.shop_port}{WEBHOOK_PATH}",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    os.environ.pop("WPD_Q_REDIS", None)
    if args.broker == "redis":
        if not redis_answers():
            sys.exit("Redis is not answering on 127.0.0.1:6379")
        os.environ["WPD_Q_REDIS"] = REDIS_URL
    import django

    django.setup()
    if args.profile:
        profile(args)
        return 0
    runs = [(args.delay_ms, args.workers)] if args.delay_ms is not None else []
    runs = runs or [(0, args.workers), (250, args.delayed_workers)]
    print(
        f"{args.purchases} purchases, +{DUPLICATES:.0%} duplicates, {args.clients} posting "
        f"clients, shop in gunicorn (2 workers x 4 threads), {args.broker} broker, "
        f"{os.cpu_count()} CPUs"
    )
    for delay_ms, workers in runs:
        report(f"{args.purchases} purchases", run(args, delay_ms, workers), delay_ms, workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
