"""What the download path costs, against plain views of the same file, under gunicorn.

    .venv/bin/python benchmarks/downloads.py [--database-url URL] [--requests 2000] [--quick]

One command, every figure against a baseline measured in the same run:

1. a whole 1 GiB (sparse) file through a hand-off URL vs a plain ``FileResponse`` view of the
   same file (target >= 0.9x: the hand-off keeps gunicorn's sendfile path);
2. a new 10 KB download each time, the button's POST and then the counted hand-off GET, vs the
   same two requests on plain views: a CSRF-checked POST answering 303, then a GET that commits
   one single-row insert and sends the file with ``FileResponse`` (the least a durable count
   can cost) (target >= 0.6x); and the counted hand-off GET alone (hand-offs minted beforehand)
   vs a bare ``FileResponse`` GET that touches no database;
3. the queries each request of a download runs (the page, the button's POST, the counted GET,
   a free follow-up GET), counted in this process with Django's test client;
4. peak memory growth of the gunicorn worker while it serves 1 GiB with a Range (a generator,
   not sendfile), from /proc/<pid>/status VmHWM after resetting it (target < 50 MB);
5. ``links.check_token`` with 1,000,000 links in PostgreSQL vs 100 links (target <= 1.5x).

Gunicorn runs one sync worker on loopback; the client is sequential, so both sides of each ratio
see the same server and the same client. The database is PostgreSQL by default (created, then
dropped); ``--database-url sqlite:///…`` runs on SQLite (1 and 5 are skipped with ``--quick``,
5 always on SQLite).

This module is also the settings module and URLconf of the gunicorn it starts (so the benchmark
stays one file): imported by Django, it defines settings and ``urlpatterns``; run as a script,
it runs the benchmark.
"""

from __future__ import annotations

import os

if __name__ != "__main__":
    # Settings and URLconf for the gunicorn worker (DJANGO_SETTINGS_MODULE=benchmarks.downloads).
    import dj_database_url
    from django.urls import include, path
    from django.views.decorators.http import require_POST

    from tests.settings import *  # noqa: F403

    DEBUG = False
    ROOT_URLCONF = "benchmarks.downloads"
    DATABASES = {
        "default": dj_database_url.parse(os.environ["WPD_BENCH_DATABASE_URL"], conn_max_age=600)
    }
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        # What a site serving from SQLite sets: WAL, the write lock taken at BEGIN, a busy wait.
        DATABASES["default"]["OPTIONS"] = {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    PRIVATE_STORAGE_ROOT = os.environ["WPD_BENCH_FILES"]
    Q_CLUSTER = {
        "name": "bench-downloads",
        "orm": "default",
        "sync": True,
        "timeout": 30,
        "retry": 60,
        "log_level": "WARNING",
    }
    WAGTAIL_PAID_DELIVERY = {
        "STRIPE_SECRET_KEY": "sk_test_bench",
        "STRIPE_WEBHOOK_SECRETS": ["whsec_bench"],
        "INSTALLATION_ID": "bench",
        "DOWNLOAD_LIMIT": None,
    }
    LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}

    def plain_file(request, name):  # type: ignore[no-untyped-def]
        """The baseline: what any Django site does to send a file, no checks at all."""
        from django.http import FileResponse

        handle = open(os.path.join(PRIVATE_STORAGE_ROOT, "bench", name), "rb")  # noqa: SIM115
        return FileResponse(handle, as_attachment=True, filename=name)

    #: The plain table the "durable count" baseline inserts one row into per download.
    PLAIN_TABLE = "bench_plain_download"

    def plain_press(request):  # type: ignore[no-untyped-def]
        """The baseline button: a POST through the same CSRF middleware, answered with a 303."""
        from django.http import HttpResponse

        response = HttpResponse(status=303)
        response["Location"] = "/plain/counted/small.bin/"
        return response

    def plain_counted(request, name):  # type: ignore[no-untyped-def]
        """The baseline of a counted download: commit one single-row insert, send the file."""
        from django.db import connection, transaction
        from django.http import FileResponse

        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {PLAIN_TABLE} (name) VALUES (%s)", [name])  # noqa: S608
        handle = open(os.path.join(PRIVATE_STORAGE_ROOT, "bench", name), "rb")  # noqa: SIM115
        return FileResponse(handle, as_attachment=True, filename=name)

    def __getattr__(name: str):  # type: ignore[no-untyped-def]
        # The URLconf is read after apps are ready; settings are read before (and via dir()).
        if name != "urlpatterns":
            raise AttributeError(name)
        patterns = [
            path("plain/press/", require_POST(plain_press)),
            path("plain/counted/<str:name>/", plain_counted),
            path("plain/<str:name>/", plain_file),
            path("shop/", include("wagtail_paid_delivery.urls")),
        ]
        globals()["urlpatterns"] = patterns
        return patterns

else:
    import argparse
    import http.client
    import random
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path
    from urllib.parse import urlparse

    ROOT = Path(__file__).resolve().parent.parent
    GIB = 1 << 30
    SMALL = 10 * 1000
    DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/wpd_bench_downloads"

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, int]:
        """One GET on a new connection; returns (status, bytes read) without keeping the body."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        total = 0
        while True:
            n = response.readinto(view)
            if not n:
                break
            total += n
        conn.close()
        return response.status, total

    #: A CSRF secret the client holds as its cookie and echoes in the header, as a page's form
    #: would (both the real button and the plain POST pass CsrfViewMiddleware).
    CSRF = "benchbenchbenchbenchbenchbench42"

    def post(port: int, path: str) -> tuple[int, str]:
        """One CSRF-checked POST on a new connection; returns (status, Location)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Cookie": f"csrftoken={CSRF}", "X-CSRFToken": CSRF, "Content-Length": "0"}
        conn.request("POST", path, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, response.getheader("Location") or ""

    def is_sqlite(url: str) -> bool:
        return url.startswith("sqlite:")

    def recreate_database(url: str) -> None:
        if is_sqlite(url):
            drop_database(url)
            return
        import psycopg

        parsed = urlparse(url)
        name = parsed.path.lstrip("/")
        admin = parsed._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    def drop_database(url: str) -> None:
        if is_sqlite(url):
            name = urlparse(url).path
            for suffix in ("", "-wal", "-shm"):
                Path(name + suffix).unlink(missing_ok=True)
            return
        import psycopg

        parsed = urlparse(url)
        admin = parsed._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{parsed.path.lstrip("/")}" WITH (FORCE)')

    def setup_data(files_root: Path, handoffs: int) -> dict:
        """Migrate, then a product with a 1 GiB sparse file and a 10 KB file, and a link."""
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from tests.factories import ProductFileFactory, ProductPageFactory, PurchaseFactory
        from wagtail_paid_delivery import links

        bench = files_root / "bench"
        bench.mkdir(parents=True, exist_ok=True)
        with open(bench / "big.bin", "wb") as f:
            f.truncate(GIB)
        (bench / "small.bin").write_bytes(random.randbytes(SMALL))

        from django.db import connection

        key = (
            "integer PRIMARY KEY AUTOINCREMENT"
            if connection.vendor == "sqlite"
            else "serial PRIMARY KEY"
        )
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE TABLE bench_plain_download (id {key}, name varchar(100))")

        product = ProductPageFactory(files=0, download_limit=0)
        big = ProductFileFactory(page=product, file="bench/big.bin", size=GIB, sha256="")
        small = ProductFileFactory(page=product, file="bench/small.bin", size=SMALL, sha256="")
        purchase = PurchaseFactory(paid=True, product=product)
        issued = links.issue_link(purchase, reason="admin")
        assert issued.link.download_limit is None
        return {
            "big": [links.handoff_url(issued.link, big) for _ in range(8)],
            "small": [links.handoff_url(issued.link, small) for _ in range(handoffs)],
            "purchase_id": purchase.pk,
            "page": f"/shop/d/{issued.token}/",
            "press": f"/shop/d/{issued.token}/{small.pk}/",
        }

    def start_gunicorn(port: int, env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "django.core.wsgi:get_wsgi_application()",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--worker-class",
                "sync",
                "--timeout",
                "300",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(port, "/plain/small.bin/")[0] == 200:
                    return process
            except OSError:
                time.sleep(0.2)
        process.kill()
        raise SystemExit("gunicorn did not start")

    def worker_pid(master: int) -> int:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return int(children[0])

    def status_kb(pid: int, field: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def best_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def bench_whole(port: int, urls: dict) -> tuple[float, float]:
        handoffs = iter(urls["big"])

        def token_path() -> None:
            status, n = get(port, next(handoffs))
            assert (status, n) == (200, GIB), (status, n)

        def plain() -> None:
            status, n = get(port, "/plain/big.bin/")
            assert (status, n) == (200, GIB), (status, n)

        get(port, "/plain/big.bin/")  # warm the page cache for both
        plain_s = best_time(plain, 3)
        token_s = best_time(token_path, 3)
        return GIB / plain_s / 1e6, GIB / token_s / 1e6

    def bench_small(port: int, urls: dict, requests: int) -> tuple[float, float]:
        def run(paths: list[str]) -> float:
            start = time.perf_counter()
            for p in paths:
                status, n = get(port, p)
                assert (status, n) == (200, SMALL), (p, status, n)
            return len(paths) / (time.perf_counter() - start)

        handoffs = urls["small"]
        for p in handoffs[:50]:  # warm-up (and the first, counted, request of these hand-offs)
            get(port, p)
        run(["/plain/small.bin/"] * 50)
        plain_rps = run(["/plain/small.bin/"] * requests)
        token_rps = run(handoffs[50 : 50 + requests])
        return plain_rps, token_rps

    def bench_pairs(port: int, urls: dict, requests: int) -> tuple[float, float]:
        """Downloads/s, each a new one: the POST answered 303, then the GET it leads to."""

        def download(press: str) -> None:
            status, location = post(port, press)
            assert status == 303, (press, status)
            status, n = get(port, urlparse(location).path)
            assert (status, n) == (200, SMALL), (location, status, n)

        def run(press: str, count: int) -> float:
            start = time.perf_counter()
            for _ in range(count):
                download(press)
            return time.perf_counter() - start

        run("/plain/press/", 50)  # warm-up of both
        run(urls["press"], 50)
        # In alternating batches, so that a burst of load from other jobs falls on both sides.
        rounds = 10
        plain = real = 0.0
        for _ in range(rounds):
            plain += run("/plain/press/", requests // rounds)
            real += run(urls["press"], requests // rounds)
        done = rounds * (requests // rounds)
        return done / plain, done / real

    def count_queries(urls: dict) -> dict[str, int]:
        """Queries per request of one download, in this process (Django's test client)."""
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        client = Client()
        client.cookies["csrftoken"] = CSRF

        def measure(method: str, url: str, **headers: str) -> tuple[int, object]:
            with CaptureQueriesContext(connection) as queries:
                response = getattr(client, method)(url, headers=headers)
                if response.streaming:
                    b"".join(response.streaming_content)
                response.close()
            return len(queries), response

        found: dict[str, int] = {}
        found["the download page (GET)"], _ = measure("get", urls["page"])
        found["the button (POST)"], pressed = measure("post", urls["press"], X_CSRFToken=CSRF)
        handoff = pressed["Location"]  # type: ignore[index]
        found["the counted hand-off GET"], _ = measure("get", handoff)
        found["a free follow-up GET (Range)"], _ = measure("get", handoff, Range="bytes=100-")
        return found

    def bench_memory(master: int, port: int, urls: dict) -> tuple[int, int]:
        pid = worker_pid(master)
        get(port, urls["big"][-1], {"Range": "bytes=0-1023"})  # warm the code path
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        before = status_kb(pid, "VmRSS")
        status, n = get(port, urls["big"][-1], {"Range": "bytes=1-"})
        assert (status, n) == (206, GIB - 1), (status, n)
        peak = status_kb(pid, "VmHWM")
        if not reset:
            print("  (could not reset VmHWM; the peak may predate this request)")
        return before, peak

    def bench_token_check(purchase_id: int, samples: int) -> tuple[float, float]:
        """Mean check_token time with 100 links, then with 1,000,000 (generate_series)."""
        import hashlib

        from django.db import connection

        from wagtail_paid_delivery import links

        def raw(n: int) -> str:
            return str(n).rjust(43, "a")

        def insert(first: int, last: int) -> None:
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    INSERT INTO wagtail_paid_delivery_downloadlink
                        (purchase_id, token_hash, reason, created_at, expires_at, download_limit,
                         download_count)
                    SELECT %s, encode(sha256(convert_to(lpad(g::text, 43, 'a'), 'UTF8')), 'hex'),
                           'admin', now(), now() + interval '1 day', NULL, 0
                    FROM generate_series(%s, %s) AS g
                    """,
                    [purchase_id, first, last],
                )
                cursor.execute("ANALYZE wagtail_paid_delivery_downloadlink")

        assert hashlib.sha256(raw(7).encode()).hexdigest()  # same recipe as the SQL above

        def measure(population: int) -> float:
            picks = [raw(random.randint(1, population)) for _ in range(samples)]
            for p in picks[:200]:
                links.check_token(p)
            start = time.perf_counter()
            for p in picks:
                links.check_token(p)
            return (time.perf_counter() - start) / samples * 1e6

        insert(1, 100)
        small = min(measure(100) for _ in range(3))
        start = time.perf_counter()
        insert(101, 1_000_000)
        print(f"  inserted 999,900 links in {time.perf_counter() - start:.1f} s")
        large = min(measure(1_000_000) for _ in range(3))
        return small, large

    def main() -> None:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--database-url", default=DEFAULT_PG)
        parser.add_argument("--requests", type=int, default=2000)
        parser.add_argument("--samples", type=int, default=5000)
        parser.add_argument(
            "--quick", action="store_true", help="only the 10 KB downloads and the query counts"
        )
        parser.add_argument("--keep-database", action="store_true")
        args = parser.parse_args()

        sys.path.insert(0, str(ROOT))
        files_root = Path(tempfile.mkdtemp(prefix="wpd-bench-downloads-"))
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "benchmarks.downloads",
            "WPD_BENCH_DATABASE_URL": args.database_url,
            "WPD_BENCH_FILES": str(files_root),
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(env)
        recreate_database(args.database_url)
        try:
            urls = setup_data(files_root, handoffs=args.requests + 60)
            from django.db import connection

            vendor = "SQLite" if connection.vendor == "sqlite" else "PostgreSQL"
            queries = count_queries(urls)
            connection.close()
            port = free_port()
            server = start_gunicorn(port, env)
            try:
                print(f"gunicorn (1 sync worker) on 127.0.0.1:{port}, {vendor}, {files_root}")

                if not args.quick:
                    before, peak = bench_memory(server.pid, port, urls)
                    growth = (peak - before) / 1024
                    print("\n1 GiB with Range (bytes=1-), gunicorn worker memory")
                    print(f"  RSS before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB")
                    print(f"  growth {growth:.1f} MB   (target < 50 MB)")

                    plain_mb, token_mb = bench_whole(port, urls)
                    print("\nWhole 1 GiB download (best of 3)")
                    print(f"  plain FileResponse  {plain_mb:8.0f} MB/s")
                    print(f"  hand-off            {token_mb:8.0f} MB/s")
                    print(f"  ratio               {token_mb / plain_mb:8.2f}x   (target >= 0.9x)")

                plain_pairs, real_pairs = bench_pairs(port, urls, args.requests)
                print(f"\nA new 10 KB download each time (POST, then GET), {args.requests} each")
                print(f"  plain POST 303 + GET with one insert  {plain_pairs:8.0f} downloads/s")
                print(f"  button POST + counted hand-off GET    {real_pairs:8.0f} downloads/s")
                ratio = real_pairs / plain_pairs
                print(f"  ratio                                 {ratio:8.2f}x   (target >= 0.6x)")

                plain_rps, token_rps = bench_small(port, urls, args.requests)
                print(
                    f"\n10 KB counted hand-off GET alone, {args.requests} sequential requests each"
                )
                print(f"  bare FileResponse (no database)  {plain_rps:8.0f} req/s")
                print(f"  counted hand-off GET             {token_rps:8.0f} req/s")
                print(f"  ratio                            {token_rps / plain_rps:8.2f}x")
            finally:
                server.terminate()
                server.wait(timeout=30)

            print(f"\nQueries per request ({vendor}, as Django logs them; no sendfile)")
            for name, n in queries.items():
                print(f"  {name:32} {n}")

            if not args.quick and vendor == "PostgreSQL":
                small_us, large_us = bench_token_check(urls["purchase_id"], args.samples)
                print(f"\ncheck_token, mean of {args.samples} lookups (best of 3)")
                print(f"  100 links           {small_us:8.1f} us")
                print(f"  1,000,000 links     {large_us:8.1f} us")
                print(f"  ratio               {large_us / small_us:8.2f}x   (target <= 1.5x)")
            connection.close()
        finally:
            for path in (files_root / "bench").glob("*"):
                path.unlink()
            if not args.keep_database:
                drop_database(args.database_url)

    main()
