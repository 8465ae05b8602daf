"""How much the webhook inbox costs, against two baselines, under gunicorn.

    python benchmarks/webhook.py [--database-url URL] [--requests 3000] [--concurrency 4]

Starts gunicorn on loopback serving benchmarks/urls.py with three POST endpoints:

- bare:   verify the Stripe signature only;
- insert: verify, then insert one row (id and body) into a plain table;
- real:   the real webhook view: verify, store a StripeEvent, enqueue the task on commit
          (django-q2's ORM broker, asynchronous: one more insert, no cluster running).

Each variant gets the same number of properly signed requests with unique event ids, sent by
``--concurrency`` client processes over keep-alive connections (http.client). It prints
requests/s, p50 and p99 per variant and the ratios real/bare and real/insert, for SQLite and,
when reachable (or given), PostgreSQL. The target is real >= 0.7 x insert, with zero errors.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import multiprocessing
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
VARIANTS = {"bare": "/bare/", "insert": "/insert/", "real": "/webhook/"}
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/wpd_bench"


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
    ids = [f"evt_{uuid.uuid4().hex}" for _ in range(total)]
    payloads = [event_payload(i) for i in ids]
    shares = [payloads[i::concurrency] for i in range(concurrency)]
    results = pool.map(client_worker, [(port, path, share) for share in shares])
    latencies = sorted(latency for r in results for latency in r[0])
    errors = sum(r[1] for r in results)
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    return {
        "rps": total / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "errors": errors,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def django_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "WPD_BENCH_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }


def prepare_database(database_url: str) -> None:
    """Create (PostgreSQL) and migrate the database, and (re)create the plain table."""
    env = django_env(database_url)
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    script = (
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
        "StripeEvent.objects.all().delete(); OrmQ.objects.all().delete()\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)


def count_rows(database_url: str) -> dict[str, int]:
    script = (
        "import django, json; django.setup()\n"
        "from django.db import connection\n"
        "from benchmarks.urls import PLAIN_TABLE as T\n"
        "from wagtail_paid_delivery.models import StripeEvent\n"
        "from django_q.models import OrmQ\n"
        "c = connection.cursor(); c.execute(f'SELECT COUNT(*) FROM {T}')\n"
        "print(json.dumps({'plain': c.fetchone()[0], 'events': StripeEvent.objects.count(),"
        " 'queued': OrmQ.objects.count()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=django_env(database_url),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_gunicorn(database_url: str, workers: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    process = subprocess.Popen(
        [
            str(gunicorn),
            "django.core.wsgi:get_wsgi_application()",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=django_env(database_url),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/bare/")
            if conn.getresponse().status == 405:
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


def bench_database(label: str, url: str, args: argparse.Namespace) -> dict[str, dict]:
    print(f"\n== {label}: preparing {url}", flush=True)
    prepare_database(url)
    server, port = start_gunicorn(url, args.workers, args.threads)
    results: dict[str, dict] = {}
    try:
        with multiprocessing.Pool(args.concurrency) as pool:
            for path in VARIANTS.values():  # warm every worker and code path
                run_variant(pool, port, path, args.concurrency * 20, args.concurrency)
            before = count_rows(url)
            for name, path in VARIANTS.items():
                results[name] = run_variant(pool, port, path, args.requests, args.concurrency)
            after = count_rows(url)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"{'variant':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:8} {r['rps']:9.0f} {r['p50']:8.2f} {r['p99']:8.2f} {r['errors']:7d}")
    real = results["real"]["rps"]
    print(f"real/bare   = {real / results['bare']['rps']:.2f}")
    ratio = real / results["insert"]["rps"]
    verdict = "OK" if ratio >= 0.7 else "BELOW TARGET"
    print(f"real/insert = {ratio:.2f}  (target >= 0.70: {verdict})")
    stored = {k: after[k] - before[k] for k in after}
    print(
        f"rows written: plain {stored['plain']}, events {stored['events']}, "
        f"queued tasks {stored['queued']} (expected {args.requests} each)"
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="benchmark only this database")
    parser.add_argument("--requests", type=int, default=3000, help="per variant")
    parser.add_argument("--concurrency", type=int, default=4, help="client processes")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
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
    print(
        f"{args.requests} requests per variant, {args.concurrency} keep-alive clients, "
        f"gunicorn {args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs"
    )
    failed = False
    for label, url in targets:
        results = bench_database(label, url, args)
        failed |= any(r["errors"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
