"""The webhook against its floor and against dj-stripe's, under gunicorn, in one run.

    python benchmarks/webhook.py [--rounds 6] [--requests 500] [--concurrency 4]
                                 [--database-url URL] [--no-djstripe] [--profile]

For SQLite and (when reachable) PostgreSQL, three servers' worth of endpoints, each behind
gunicorn on loopback with the same workers, threads and middleware:

- floor:    the least a durable webhook can do: stripe-python checks the signature, the body
            is parsed for its id, one row is inserted (autocommit);
- webhook:  the shop's view: verify (strictly), store the StripeEvent and queue its django-q2
            task in one transaction (ORM broker, asynchronous; no cluster runs);
- djstripe: dj-stripe's own view (latest release, 2.11.0, in its own virtualenv,
            ``benchmarks/.venv-djstripe``, made on first use), record only: it verifies the
            signature and stores its WebhookEventTrigger; its processing hook does nothing.

Every request is a distinct ``checkout.session.completed`` event signed with Stripe's scheme;
the three get the same events. The variants are interleaved: ``--rounds`` rounds, each sending
``--requests`` events to every variant in a rotated order, so a burst of load from other jobs
on a shared machine hits all of them alike. It prints requests/s and p50/p99 per variant, the
ratios per round and their median (the figure to read), the statements per event, and checks
that every event was stored once. Targets: webhook >= 0.7x floor, webhook >= 2x djstripe.
``--profile`` instead profiles the webhook view in process (cProfile) and prints the top.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import multiprocessing
import multiprocessing.pool
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_bench"
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/wpd_bench"
DJSTRIPE_VERSION = "2.11.0"
DJSTRIPE_VENV = ROOT / "benchmarks" / ".venv-djstripe"
#: dj-stripe's endpoint for the run (its URL carries the uuid).
DJSTRIPE_ENDPOINT = "8f3e2a8e-4b7c-4c39-9d51-0c0ffee0beef"
TARGETS = {"webhook/floor": 0.7, "webhook/djstripe": 2.0}


def event_payload(event_id: str) -> bytes:
    """A checkout.session.completed event the real view accepts as ours (and enqueues)."""
    purchase = str(uuid.uuid4())
    session = {
        "id": f"cs_test_{event_id[4:]}",
        "object": "checkout.session",
        "amount_subtotal": 1250,
        "amount_total": 1250,
        "client_reference_id": purchase,
        "currency": "usd",
        "customer_details": {"email": "buyer@example.com", "name": None},
        "livemode": False,
        "metadata": {"wpd_installation": "bench", "wpd_purchase": purchase, "wpd_product": "3"},
        "mode": "payment",
        "payment_intent": f"pi_{event_id[4:]}",
        "payment_status": "paid",
        "status": "complete",
        "success_url": "https://shop.example.com/thanks/?session_id={CHECKOUT_SESSION_ID}",
    }
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "data": {"object": session},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "checkout.session.completed",
    }
    return json.dumps(event).encode()


def sign(payload: bytes) -> str:
    """Stripe's scheme: v1 = HMAC-SHA256 of "<timestamp>.<body>" with the endpoint's secret."""
    ts = int(time.time())
    mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def client_worker(args: tuple[int, str, list[bytes]]) -> tuple[list[float], int, float, float]:
    """One client process: its share of requests over one keep-alive connection."""
    port, path, payloads = args
    signed = [(p, sign(p)) for p in payloads]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    errors = 0
    start = time.time()
    for payload, header in signed:
        t0 = time.perf_counter()
        try:
            conn.request(
                "POST",
                path,
                body=payload,
                headers={"Content-Type": "application/json", "Stripe-Signature": header},
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies.append(time.perf_counter() - t0)
    end = time.time()
    conn.close()
    return latencies, errors, start, end


def run_variant(
    pool: multiprocessing.pool.Pool, port: int, path: str, total: int, concurrency: int
) -> dict[str, float]:
    payloads = [event_payload(f"evt_{uuid.uuid4().hex}") for _ in range(total)]
    shares = [payloads[i::concurrency] for i in range(concurrency)]
    results = pool.map(client_worker, [(port, path, share) for share in shares])
    latencies = sorted(latency for r in results for latency in r[0])
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    return {
        "rps": total / elapsed,
        "latencies": latencies,
        "errors": sum(r[1] for r in results),
        "elapsed": elapsed,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def django_env(database_url: str, settings: str = "benchmarks.settings") -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "WPD_BENCH_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }


def run_script(python: str, script: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [python, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


def prepare_database(database_url: str, *, migrate: bool = True) -> None:
    """Migrate the database, (re)create the floor's plain table, empty the inbox and queue."""
    env = django_env(database_url)
    if migrate:
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
    run_script(
        sys.executable,
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "from benchmarks.urls import PLAIN_TABLE as T\n"
        "with connection.cursor() as c:\n"
        "    c.execute(f'DROP TABLE IF EXISTS {T}')\n"
        "    pk = 'BIGSERIAL PRIMARY KEY' if connection.vendor == 'postgresql'"
        " else 'INTEGER PRIMARY KEY AUTOINCREMENT'\n"
        "    c.execute(f'CREATE TABLE {T} (id {pk}, stripe_id VARCHAR(255) UNIQUE NOT NULL,"
        " payload TEXT NOT NULL)')\n"
        "from wagtail_paid_delivery.models import StripeEvent\n"
        "from django_q.models import OrmQ\n"
        "StripeEvent.objects.all().delete(); OrmQ.objects.all().delete()\n",
        env,
    )


def count_rows(database_url: str) -> dict[str, int]:
    out = run_script(
        sys.executable,
        "import django, json; django.setup()\n"
        "from django.db import connection\n"
        "from benchmarks.urls import PLAIN_TABLE as T\n"
        "from wagtail_paid_delivery.models import StripeEvent\n"
        "from django_q.models import OrmQ\n"
        "c = connection.cursor(); c.execute(f'SELECT COUNT(*) FROM {T}')\n"
        "print(json.dumps({'floor': c.fetchone()[0], 'webhook': StripeEvent.objects.count(),"
        " 'queued': OrmQ.objects.count()}))\n",
        django_env(database_url),
    )
    return json.loads(out.strip().splitlines()[-1])


def statements_per_event(database_url: str) -> str:
    """The statements the shop's view sends for a new event and for a duplicate, in process."""
    out = run_script(
        sys.executable,
        "import django, json, uuid; django.setup()\n"
        "from django.db import connection\n"
        "from django.test import Client\n"
        "from django.test.utils import CaptureQueriesContext\n"
        "from benchmarks.webhook import event_payload, sign\n"
        "client, counts = Client(), []\n"
        "payload = event_payload(f'evt_{uuid.uuid4().hex}')\n"
        "for _ in range(2):\n"
        "    with CaptureQueriesContext(connection) as q:\n"
        "        r = client.post('/webhook/', payload, content_type='application/json',"
        " HTTP_STRIPE_SIGNATURE=sign(payload))\n"
        "    counts.append((r.content.decode(), [x['sql'].split()[0] for x in q]))\n"
        "print(json.dumps(counts))\n",
        django_env(database_url),
    )
    counts = json.loads(out.strip().splitlines()[-1])
    return "; ".join(f"{answer}: {len(sql)} ({' '.join(sql)})" for answer, sql in counts)


# dj-stripe, in its own virtualenv ------------------------------------------------------------


def djstripe_python() -> str:
    """dj-stripe's virtualenv's python, made (and dj-stripe installed from PyPI) on first use."""
    python = DJSTRIPE_VENV / "bin" / "python"
    marker = DJSTRIPE_VENV / f".installed-{DJSTRIPE_VERSION}"
    if not marker.exists():
        print(f"(installing dj-stripe {DJSTRIPE_VERSION} into {DJSTRIPE_VENV})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(DJSTRIPE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + [f"dj-stripe=={DJSTRIPE_VERSION}", "gunicorn", "psycopg[binary]", "dj-database-url"],
            check=True,
        )
        marker.touch()
    return str(python)


def prepare_djstripe(database_url: str) -> None:
    """Migrate dj-stripe's database and give it the endpoint (same secret) the run posts to."""
    python = djstripe_python()
    env = django_env(database_url, "benchmarks.djstripe_settings")
    subprocess.run(
        [python, "-m", "django", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    run_script(
        python,
        "import django; django.setup()\n"
        "from djstripe.models import WebhookEndpoint, WebhookEventTrigger\n"
        "WebhookEventTrigger.objects.all().delete(); WebhookEndpoint.objects.all().delete()\n"
        "WebhookEndpoint.objects.create(id='we_bench', livemode=False, enabled_events=['*'],"
        f" secret={SECRET!r}, status='enabled', url='https://shop.example.com/stripe/',"
        f" djstripe_uuid={DJSTRIPE_ENDPOINT!r})\n",
        env,
    )


def count_djstripe_rows(database_url: str) -> int:
    out = run_script(
        djstripe_python(),
        "import django; django.setup()\n"
        "from djstripe.models import WebhookEventTrigger\n"
        "print(WebhookEventTrigger.objects.filter(valid=True, exception='').count())\n",
        django_env(database_url, "benchmarks.djstripe_settings"),
    )
    return int(out.strip().splitlines()[-1])


# Servers ---------------------------------------------------------------------------------------


def start_gunicorn(
    python: str, env: dict[str, str], args: argparse.Namespace, probe: str
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [str(Path(python).with_name("gunicorn")), "django.core.wsgi:get_wsgi_application()"]
        + ["--bind", f"127.0.0.1:{port}", "--workers", str(args.workers)]
        + ["--worker-class", "gthread", "--threads", str(args.threads)]
        + ["--keep-alive", "30", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", probe)
            conn.getresponse().read()
            return process, port
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("gunicorn did not start")


def postgres_reachable(url: str) -> bool:
    """Whether the server answers; creates the database when it is missing."""
    try:
        import psycopg
    except ImportError:
        return False
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        return False
    return True


def djstripe_url_for(url: str) -> str:
    """dj-stripe's database: its own, on the same server (or the same disk)."""
    if url.startswith("sqlite"):
        # Kept with its virtualenv: dj-stripe's migrations take minutes on a busy machine.
        return f"sqlite:///{DJSTRIPE_VENV / 'bench.sqlite3'}"
    return url + "_djstripe"


def bench_database(label: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    print(f"\n== {label}: {url}", flush=True)
    prepare_database(url)
    print(f"statements per event (shop's view): {statements_per_event(url)}")
    prepare_database(url, migrate=False)
    shop, shop_port = start_gunicorn(sys.executable, django_env(url), args, "/floor/")
    servers = [shop]
    paths = {"floor": (shop_port, "/floor/"), "webhook": (shop_port, "/webhook/")}
    djstripe_db = djstripe_url_for(url)
    if args.djstripe:
        if djstripe_db.startswith("postgres"):
            postgres_reachable(djstripe_db)
        prepare_djstripe(djstripe_db)
        env = django_env(djstripe_db, "benchmarks.djstripe_settings")
        djstripe, dj_port = start_gunicorn(djstripe_python(), env, args, "/")
        servers.append(djstripe)
        paths["djstripe"] = (dj_port, f"/stripe/webhook/{DJSTRIPE_ENDPOINT}/")
    names = list(paths)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        with multiprocessing.Pool(args.concurrency) as pool:
            for port, path in paths.values():  # warm every worker and code path
                run_variant(pool, port, path, args.concurrency * 25, args.concurrency)
            before = count_rows(url)
            dj_before = count_djstripe_rows(djstripe_db) if args.djstripe else 0
            for round_no in range(args.rounds):
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    port, path = paths[name]
                    runs[name].append(
                        run_variant(pool, port, path, args.requests, args.concurrency)
                    )
                summary = "  ".join(f"{n} {runs[n][-1]['rps']:.0f}/s" for n in names)
                print(f"round {round_no + 1}/{args.rounds} ({' > '.join(order)}): {summary}")
            after = count_rows(url)
            dj_after = count_djstripe_rows(djstripe_db) if args.djstripe else 0
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    return report(args, names, runs, before, after, dj_after - dj_before)


def report(
    args: argparse.Namespace,
    names: list[str],
    runs: dict[str, list[dict]],
    before: dict[str, int],
    after: dict[str, int],
    djstripe_rows: int,
) -> dict[str, float]:
    print(f"{'variant':9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   (all rounds)")
    for name in names:
        latencies = sorted(x for r in runs[name] for x in r["latencies"])
        total = sum(len(r["latencies"]) for r in runs[name])
        rps = total / sum(r["elapsed"] for r in runs[name])
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        errors = sum(r["errors"] for r in runs[name])
        print(f"{name:9} {rps:8.0f} {p50:8.2f} {p99:8.2f} {errors:7d}")
    ratios: dict[str, float] = {"errors": sum(r["errors"] for v in runs.values() for r in v)}
    for ratio, target in TARGETS.items():
        top, bottom = ratio.split("/")
        if bottom not in runs:
            continue
        per_round = [a["rps"] / b["rps"] for a, b in zip(runs[top], runs[bottom], strict=True)]
        median = statistics.median(per_round)
        ratios[ratio] = median
        verdict = "OK" if median >= target else f"BELOW TARGET by {target - median:.2f}"
        rounds = " ".join(f"{r:.2f}" for r in per_round)
        print(
            f"{ratio:17} = {median:.2f} median of rounds [{rounds}]  "
            f"(target >= {target}: {verdict})"
        )
    stored = {k: after[k] - before[k] for k in after}
    expected = args.rounds * args.requests
    line = (
        f"rows written: floor {stored['floor']}, events {stored['webhook']}, "
        f"queued tasks {stored['queued']}"
    )
    if "djstripe" in runs:
        line += f", dj-stripe triggers {djstripe_rows}"
    print(f"{line} (expected {expected} each)")
    counts = [stored["floor"], stored["webhook"], stored["queued"]]
    if "djstripe" in runs:
        counts.append(djstripe_rows)
    if any(count != expected for count in counts):
        ratios["errors"] += 1
        print("ROWS MISSING OR EXTRA")
    return ratios


def profile(url: str, requests: int) -> None:
    """Profile the shop's view and the floor in process (test client, same database)."""
    prepare_database(url)
    out = run_script(
        sys.executable,
        "import cProfile, io, pstats, uuid, django; django.setup()\n"
        "from django.test import Client\n"
        "from benchmarks.webhook import event_payload, sign\n"
        "client = Client()\n"
        "def post(path):\n"
        "    p = event_payload(f'evt_{uuid.uuid4().hex}')\n"
        "    client.post(path, p, content_type='application/json', HTTP_STRIPE_SIGNATURE=sign(p))\n"
        "for path in ('/floor/', '/webhook/'):\n"
        "    for _ in range(50): post(path)\n"
        "    profiler = cProfile.Profile(); profiler.enable()\n"
        f"    for _ in range({requests}): post(path)\n"
        "    profiler.disable(); s = io.StringIO()\n"
        "    stats = pstats.Stats(profiler, stream=s)\n"
        f"    print(f'== {{path}}: {{stats.total_tt / {requests} * 1000:.3f}} ms per request"
        " in process (client and signing included)')\n"
        "    stats.sort_stats('cumulative').print_stats(40); print(s.getvalue())\n",
        django_env(url),
    )
    print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", help="benchmark only this database")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=500, help="per variant and round")
    parser.add_argument("--concurrency", type=int, default=4, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--no-djstripe", dest="djstripe", action="store_false")
    parser.add_argument("--profile", action="store_true", help="profile in process instead")
    args = parser.parse_args()

    targets: list[tuple[str, str]] = []
    if args.database_url:
        targets.append(("given database", args.database_url))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="wpd-bench-"))
        targets.append(("SQLite", f"sqlite:///{tmp / 'bench.sqlite3'}"))
        pg = os.environ.get("WPD_BENCH_POSTGRES_URL", DEFAULT_PG)
        if postgres_reachable(pg):
            targets.append(("PostgreSQL", pg))
        else:
            print(f"(PostgreSQL at {pg} not reachable: skipped)")
    if args.profile:
        for label, url in targets:
            print(f"\n== {label}")
            profile(url, args.requests)
        return 0
    load = os.getloadavg()
    print(
        f"{args.rounds} rounds x {args.requests} requests per variant, {args.concurrency} "
        f"keep-alive clients, gunicorn {args.workers} workers x {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start"
    )
    failed = False
    for label, url in targets:
        results = bench_database(label, url, args)
        failed |= bool(results["errors"])
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
