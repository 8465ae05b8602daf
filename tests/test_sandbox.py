"""The sandbox: its seed command, its SQLite settings under load, its launcher and its pages.

Everything runs the real sandbox in subprocesses (``sandbox/manage.py``, ``sandbox/run.py``) with
the sandbox's own settings, against a temporary SQLite database and temporary file folders (a tiny
settings module that only moves the paths), so a developer's sandbox/var/ is never touched and the
suite's own database (SQLite or PostgreSQL) is not involved.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "sandbox" / "manage.py")]
RUN = [sys.executable, str(ROOT / "sandbox" / "run.py")]

pytestmark = pytest.mark.slow

OVERLAY = """\
from sandbox.settings import *  # noqa: F403

# Only the paths move; everything else is the sandbox's own configuration.
MEDIA_ROOT = {root!r} + "/media"
STATIC_ROOT = {root!r} + "/static"
PRIVATE_STORAGE_ROOT = {root!r} + "/private"
EMAIL_FILE_PATH = {root!r} + "/mail"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sandbox:
    root: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*MANAGE, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"manage.py {args[0]} failed:\n{result.stderr}"
        return result

    def query(self, code: str) -> object:
        """Run Python in the sandbox (Django set up) and return what it assigns to ``result``."""
        script = textwrap.dedent(code) + "\nimport json\nprint('RESULT:' + json.dumps(result))\n"
        output = self.manage("shell", "-v", "0", "-c", script).stdout
        line = next(line for line in output.splitlines() if line.startswith("RESULT:"))
        return json.loads(line.removeprefix("RESULT:"))


def make_sandbox(root: Path, template_db: Path | None = None) -> Sandbox:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sandbox_test_settings.py").write_text(OVERLAY.format(root=str(root)))
    db = root / "db.sqlite3"
    if template_db is not None:
        # The SQLite backup API copies a consistent database, WAL contents included.
        with sqlite3.connect(template_db) as src, sqlite3.connect(db) as dst:
            src.backup(dst)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STRIPE_") and k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")
    }
    sandbox = Sandbox(root=root, port=free_port())
    env.update(
        DJANGO_SETTINGS_MODULE="sandbox_test_settings",
        PYTHONPATH=os.pathsep.join([str(root), str(ROOT)]),
        DATABASE_URL=f"sqlite:///{db}",
        SANDBOX_PORT=str(sandbox.port),
        PYTHONUNBUFFERED="1",
    )
    sandbox.env = env
    return sandbox


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """A migrated, empty sandbox database, made once and copied by each test that needs one."""
    sandbox = make_sandbox(tmp_path_factory.mktemp("sandbox-template"))
    sandbox.manage("migrate", "--noinput", "-v", "0", timeout=300)
    return sandbox.root / "db.sqlite3"


@pytest.fixture
def sandbox(tmp_path, migrated_db) -> Sandbox:
    return make_sandbox(tmp_path / "sandbox", migrated_db)


# Seed


STATE = """
from django.contrib.auth import get_user_model
from django.conf import settings
from wagtail.models import Page, Revision, Site
from sandbox.home.models import HomePage
from wagtail_paid_delivery.models import DeliveryCopy, FileVersion
from wagtail_paid_delivery.product.models import ProductFile, ProductPage

site = Site.objects.get(is_default_site=True)
admin = get_user_model().objects.get(username="admin")
result = {
    "pages": Page.objects.count(),
    "revisions": Revision.objects.count(),
    "homes": HomePage.objects.count(),
    "site": [site.hostname, site.port, site.root_page_id == HomePage.objects.get().pk],
    "default_copies": DeliveryCopy.objects.filter(is_default=True).count(),
    "admin": [admin.is_superuser, admin.check_password("admin")],
    "private_root": str(settings.PRIVATE_STORAGE_ROOT),
    "media_root": str(settings.MEDIA_ROOT),
    "products": [
        {
            "title": p.title, "live": p.live, "price": p.price_display, "currency": p.currency,
            "amount": p.price_amount, "url": p.url, "id": p.pk,
            "pwyw": p.pay_what_you_want, "activations": p.license_activation_limit,
            "child_of_home": p.get_parent().specific_class is HomePage,
            "in_revision": len(p.get_latest_revision().content.get("files", [])),
            "includes": [item["product"] for item in
                         p.get_latest_revision().content.get("bundle_items", [])],
        }
        for p in ProductPage.objects.order_by("path")
    ],
    "files": [
        {"product": f.page.title, "name": f.file.name, "path": f.file.path, "size": f.size,
         "sha256": f.sha256,
         "versions": [[v.number, v.sha256, v.file.name] for v in FileVersion.objects.filter(
             file_id=f.pk).order_by("number")]}
        for f in ProductFile.objects.order_by("page__path", "sort_order")
    ],
}
"""


SEED_TWICE = """
import io
from django.core.management import call_command

def seed(*args):
    out = io.StringIO()
    call_command("seed_sandbox", *args, stdout=out)
    return out.getvalue()

def state():
    scope = {}
    exec(STATE, scope)
    return scope["result"]

first_output = seed()
first = state()
second_output = seed()
result = {"first_output": first_output, "first": first,
          "second_output": second_output, "second": state()}
"""


def seed_and_inspect(sandbox: Sandbox, script: str) -> dict:
    return sandbox.query(f"STATE = {STATE!r}\n" + script)


def test_seed_sandbox_creates_the_demo_shop_and_a_second_run_changes_nothing(sandbox):
    import hashlib

    run = seed_and_inspect(sandbox, SEED_TWICE)
    first, state = run["first_output"], run["first"]
    assert "Created the home page." in first
    assert "username: admin   password: admin" in first
    assert f"http://127.0.0.1:{sandbox.port}/admin/" in first

    assert state["homes"] == 1
    assert state["site"] == ["127.0.0.1", sandbox.port, True]
    assert state["default_copies"] == 1
    assert state["admin"] == [True, True]
    products = {p["title"]: p for p in state["products"]}
    assert set(products) == {
        "Field Guide (PDF)",
        "Sample Pack (ZIP)",
        "Tide Clock (app)",
        "Shoreline Bundle",
    }
    assert all(p["live"] and p["child_of_home"] for p in products.values())
    # Files are part of the published revision, so editing in the admin keeps them.
    assert {title: p["in_revision"] for title, p in products.items()} == {
        "Field Guide (PDF)": 2,  # and its checklist: "Download all" is offered
        "Sample Pack (ZIP)": 1,
        "Tide Clock (app)": 1,
        "Shoreline Bundle": 0,  # its included products are what it delivers
    }
    # So are the bundle's included products.
    assert products["Shoreline Bundle"]["includes"] == [
        products["Field Guide (PDF)"]["id"],
        products["Sample Pack (ZIP)"]["id"],
    ]
    field_guide, sample_pack = products["Field Guide (PDF)"], products["Sample Pack (ZIP)"]
    assert (field_guide["amount"], field_guide["currency"], field_guide["price"]) == (
        1900,
        "USD",
        "$19.00",
    )
    assert (sample_pack["amount"], sample_pack["currency"], sample_pack["price"]) == (
        1200,
        "JPY",
        "¥1,200",
    )

    # The app: pay what you want from $5, a license key for two activations.
    tide_clock = products["Tide Clock (app)"]
    assert (tide_clock["amount"], tide_clock["pwyw"], tide_clock["activations"]) == (500, True, 2)

    files = {Path(f["name"]).name: f for f in state["files"]}
    assert len(state["files"]) == 4
    for f in files.values():
        path = Path(f["path"])
        data = path.read_bytes()
        # Recorded on save, through the product file model.
        assert f["size"] == len(data) > 0
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
        # Every seeded file is its version 1.
        assert f["versions"] == [[1, f["sha256"], f["name"]]]
        assert path.is_relative_to(state["private_root"])
        assert not path.is_relative_to(state["media_root"])
    assert_valid_pdf(Path(files["field-guide.pdf"]["path"]).read_bytes())
    assert Path(files["shoreline-checklist.txt"]["path"]).read_bytes().startswith(b"Shoreline")
    with zipfile.ZipFile(files["sample-pack.zip"]["path"]) as archive:
        assert archive.testzip() is None
        assert any(name.endswith(".wav") for name in archive.namelist())

    assert "nothing changed" in run["second_output"]
    assert run["second"] == state


def test_seed_sandbox_follows_the_port_and_restores_a_missing_file(sandbox):
    run = seed_and_inspect(
        sandbox,
        SEED_TWICE.replace(
            "second_output = seed()",
            "import os\n"
            "os.unlink(first['files'][0]['path'])\n"
            "second_output = seed('--port', '8123')",
        ),
    )
    before, after, output = run["first"], run["second"], run["second_output"]

    assert "Pointed the default site at 127.0.0.1:8123." in output
    assert after["site"][:2] == ["127.0.0.1", 8123]
    assert "Re-created the missing file" in output
    assert len(after["files"]) == 4 and after["pages"] == before["pages"]
    restored = Path(after["files"][0]["path"])
    assert restored.exists() and after["files"][0]["sha256"] == before["files"][0]["sha256"]


def assert_valid_pdf(data: bytes) -> None:
    """Header, trailer and an xref table whose every offset points at its object."""
    assert data.startswith(b"%PDF-1.")
    assert data.rstrip().endswith(b"%%EOF")
    xref_at = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data).group(1))
    assert data[xref_at:].startswith(b"xref")
    header = re.match(rb"xref\s+0 (\d+)\s+", data[xref_at:])
    count = int(header.group(1))
    entries = data[xref_at + header.end() :].split(b"\n")[:count]
    for number, entry in enumerate(entries[1:], start=1):
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj" % number), f"object {number} misplaced"
    assert b"/Type /Catalog" in data and b"/Type /Page " in data


# SQLite under concurrent writers

HAMMER = """
import json, sys, threading, time
import django
django.setup()
from django.db import connection, transaction
from wagtail.models import Page
from wagtail_paid_delivery.models import StripeEvent

from pathlib import Path

worker, threads, rounds, rendezvous = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
errors = []
go = Path(rendezvous, "go")

def run(thread):
    try:
        while not go.exists():
            time.sleep(0.002)
        for i in range(rounds):
            # A webhook: read, then write, in one transaction. With SQLite's default deferred
            # transactions this is what fails at once with "database is locked".
            with transaction.atomic():
                StripeEvent.objects.filter(type="sandbox.hammer").count()
                StripeEvent.objects.create(
                    stripe_id=f"evt_{worker}_{thread}_{i}", type="sandbox.hammer", payload={}
                )
            # A page load, and a write outside any transaction (a session, a task result).
            list(Page.objects.live().values_list("pk", flat=True)[:10])
            StripeEvent.objects.filter(stripe_id=f"evt_{worker}_{thread}_{i}").update(attempts=1)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()

pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for t in pool:
    t.start()
Path(rendezvous, f"ready-{worker}").touch()
for t in pool:
    t.join()
print(json.dumps({"errors": errors}))
"""


def test_sandbox_sqlite_takes_concurrent_writes_without_database_is_locked(sandbox):
    processes, threads, rounds = 4, 4, 25
    rendezvous = sandbox.root / "rendezvous"
    rendezvous.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(n), str(threads), str(rounds), str(rendezvous)],
            env=sandbox.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    # Every writer starts at the same moment, once all have set Django up.
    deadline = time.monotonic() + 120
    while len(list(rendezvous.glob("ready-*"))) < processes:
        assert all(w.poll() is None for w in workers), "a writer died while starting"
        assert time.monotonic() < deadline, "writers did not start"
        time.sleep(0.05)
    (rendezvous / "go").touch()
    outputs = [worker.communicate(timeout=180) for worker in workers]

    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert "database is locked" not in stdout + stderr
        assert worker.returncode == 0, stderr
        assert json.loads(stdout.strip().splitlines()[-1]) == {"errors": []}
    written, journal_mode, transaction_mode = sandbox.query(
        "from django.db import connection\n"
        "from wagtail_paid_delivery.models import StripeEvent\n"
        "written = StripeEvent.objects.filter(type='sandbox.hammer', attempts=1).count()\n"
        "mode = connection.cursor().execute('PRAGMA journal_mode').fetchone()[0]\n"
        "result = [written, mode, connection.transaction_mode]"
    )
    assert written == processes * threads * rounds
    # The settings really are the ones in use: WAL and IMMEDIATE transactions.
    assert (journal_mode, transaction_mode) == ("wal", "IMMEDIATE")


# The launcher and the running site


class RunningSandbox:
    """``sandbox/run.py`` in a subprocess, its output collected by a reader thread."""

    def __init__(self, sandbox: Sandbox) -> None:
        import threading

        self.sandbox = sandbox
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            RUN,
            env=sandbox.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C would reach only run.py, like here
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "Press Ctrl-C to stop." not in self.output:
            assert self.proc.poll() is None, f"run.py exited early:\n{self.output}"
            assert time.monotonic() < deadline, f"run.py not ready:\n{self.output}"
            time.sleep(0.2)

    def process_groups(self) -> list[int]:
        return [int(g) for g in re.findall(r"started \w+ \(process group (\d+)\)", self.output)]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.reader.join(timeout=5)
            # Whatever happened, leave nothing behind for the rest of the suite.
            for pgid in self.process_groups():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)


def live_processes(sandbox: Sandbox, groups: list[int]) -> list[str]:
    """Processes (not zombies) in the given groups or started with this sandbox's environment."""
    marker = f"SANDBOX_PORT={sandbox.port}".encode()
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc_dir / "stat").read_text()
            state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            environ = (proc_dir / "environ").read_bytes()
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if state in ("Z", "X") or int(proc_dir.name) == os.getpid():
            continue
        if int(pgrp) in groups or marker in environ.split(b"\0"):
            found.append(f"{proc_dir.name} [{state}] {cmdline}")
    return found


def get(url: str, *, retries: int = 20) -> tuple[int, str]:
    """GET without following redirects; a few retries ride out an autoreloader restart."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    for attempt in range(retries):
        try:
            with opener.open(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError):
            if attempt == retries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def running_sandbox(tmp_path_factory, migrated_db) -> Iterator[RunningSandbox]:
    """One sandbox served for the module's page tests; stopped with SIGTERM, which must work."""
    sandbox = make_sandbox(tmp_path_factory.mktemp("running-sandbox"), migrated_db)
    running = RunningSandbox(sandbox)
    try:
        running.wait_until_ready()
        yield running
    finally:
        returncode = running.stop(signal.SIGTERM)
    groups = running.process_groups()
    assert returncode == 0, f"SIGTERM: run.py exited with {returncode}:\n{running.output}"
    assert live_processes(sandbox, groups) == [], "SIGTERM left processes behind"


def test_run_serves_the_shop_and_never_a_private_file(running_sandbox):
    sandbox = running_sandbox.sandbox
    base = sandbox.base_url

    status, home = get(base + "/")
    assert status == 200
    assert "Field Guide (PDF)" in home and "$19.00" in home
    assert "Sample Pack (ZIP)" in home and "¥1,200" in home and "¥1,200.00" not in home
    for path, price in (("/field-guide/", "$19.00"), ("/sample-pack/", "¥1,200")):
        status, html = get(base + path)
        assert status == 200 and price in html
    status, login = get(base + "/admin/login/")
    assert status == 200 and 'name="password"' in login

    names = sandbox.query(
        "from wagtail_paid_delivery.product.models import ProductFile\n"
        "result = [f.file.name for f in ProductFile.objects.all()]"
    )
    assert len(names) == 4  # the field guide, its checklist, the sample pack, the tide clock
    for name in names:
        assert (sandbox.root / "private" / name).exists()
        for prefix in ("/media/", "/private-media/", "/static/", "/", "/shop/", "/documents/"):
            status, body = get(base + prefix + name)
            assert status in (404, 405), (prefix + name, status)
        # The editors' view: anonymous visitors are sent to log in.
        status, _ = get(f"{base}/admin/paid-delivery/files/{name}")
        assert status in (302, 404)


def test_runservers_access_log_holds_no_token(running_sandbox):
    """The sandbox's LOGGING (RedactTokensFilter on every handler) against a real runserver."""
    base = running_sandbox.sandbox.base_url
    token = "Tk9_-" * 8 + "xyz"
    signed = "eyJsIjoxLCJmIjoyfQ:1uAbCd:Zm9vYmFyYmF6cXV4"
    paths = [
        f"/shop/d/{token}/",
        f"/shop/d%2F{token}/",
        f"/shop/%64/{token}/",
        f"/shop/d%252F{token}/",
        f"/shop/D/{token}/",
        f"/shop/d/{token[:15]}/",
        f"/shop/d/h/{signed}/",
        f"/shop/d/%68/{signed}/",
        f"/shop/thanks/?next=%2Fshop%2Fd%2F{token}%2F",
    ]
    for path in paths:
        get(base + path, retries=3)
    deadline = time.monotonic() + 10
    while running_sandbox.output.count("[redacted]") < len(paths):
        assert time.monotonic() < deadline, running_sandbox.output[-3000:]
        time.sleep(0.2)
    output = running_sandbox.output
    for secret in (token, signed):
        for i in range(len(secret) - 7):
            assert secret[i : i + 8] not in output, secret[i : i + 8]
    assert '"GET /shop/d/[redacted]/ HTTP/1.1" 404' in output


def test_a_sale_in_the_sandbox_leaves_the_shops_new_sale_email_in_its_mail_folder(
    running_sandbox,
):
    """The sandbox names an address in NEW_SALE_EMAILS: buy (the Buy button, then the emulator
    pays and sends its webhooks), and the notice lands beside the buyer's email."""
    sandbox = running_sandbox.sandbox
    base = sandbox.base_url
    status, html = get(base + "/field-guide/")
    action = re.search(r'<form class="pd-checkout" method="post" action="([^"]+)"', html)
    assert status == 200 and action

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    buy = urllib.request.Request(
        base + action.group(1), data=b"", method="POST", headers={"Origin": base}
    )
    with pytest.raises(urllib.error.HTTPError) as answer:  # 303: not followed
        urllib.request.build_opener(NoRedirect).open(buy, timeout=30)
    assert answer.value.code == 303
    session_id = answer.value.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    sandbox.manage("trigger", "pay", session_id, "--email", "ada@example.com")

    deadline = time.monotonic() + 90
    notice = ""
    while not notice:
        assert time.monotonic() < deadline, running_sandbox.output[-3000:]
        time.sleep(0.5)
        for path in (sandbox.root / "mail").glob("*"):
            text = path.read_text(errors="replace")
            if "Subject: [TEST] New sale:" in text:
                notice = text
    assert "To: owner@sandbox.invalid" in notice
    # What was charged: the sandbox's emulator adds its 10 % tax to the $19.00 price.
    assert "Subject: [TEST] New sale: Field Guide (PDF), $20.90" in notice
    assert "Buyer: ada@example.com" in notice and "Mode: TEST" in notice
    assert re.search(rf"{re.escape(base)}/admin/shop/purchases/\d+/", notice)
    assert "/shop/d/" not in notice

    # The console: the purchase's lines stand out, the routine chatter around them is quiet.
    deadline = time.monotonic() + 30
    while "[shop] Email" not in running_sandbox.output:
        assert time.monotonic() < deadline, running_sandbox.output[-3000:]
        time.sleep(0.3)
    output = running_sandbox.output
    assert "[shop] Checkout started: Field Guide (PDF), $19.00 (purchase " in output
    assert re.search(r"^\[shop\] Purchase [0-9a-f-]{36} paid \(session cs_", output, re.M)
    assert re.search(r"^\[shop\] Email \d+ \(delivery\) sent", output, re.M)
    assert "\033[" not in output  # no colour codes when the console is not a terminal
    for routine in (
        "Request to Stripe api",  # stripe-python, each request
        "Stripe API response",
        "ready for work",  # django-q2's start-up and every task it picks up
        "Processed '",
        "Stripe emulator: checkout.session.completed",  # each webhook the emulator sends
        "Applying wagtailcore",  # every migration
        "Task id=",  # Wagtail's background tasks while seeding
        '"POST /stripe-emulator/v1/checkout/sessions',  # the shop's calls, seen by the emulator
        '"GET /stripe-emulator/v1/',
    ):
        assert routine not in output, routine


def test_run_prints_where_to_click_once_after_the_site_answered(running_sandbox):
    base = running_sandbox.sandbox.base_url
    output = running_sandbox.output
    assert output.count("Site:   ") == 1 and output.count("Press Ctrl-C to stop.") == 1
    # After runserver's start-up lines (printed before it listens), and after an answer: the
    # launcher's own request is in the access log (which may print just after the block).
    assert output.index("Starting development server") < output.index("Site:   ")
    assert '"GET / HTTP/1.1" 200' in output
    block = output[output.index("Site:   ") : output.index("Press Ctrl-C to stop.")]
    assert f"Site:   {base}/\n" in block
    assert f"Field Guide (PDF): $19.00  {base}/field-guide/" in block
    assert f"Admin:  {base}/admin/\n" in block and "username: admin   password: admin" in block
    assert f"Stripe: {base}/stripe-emulator/" in block and "emulator's dashboard" in block
    mail = re.search(r"^Mail:   (.+)/$", block, re.M)
    assert mail and Path(mail.group(1)) == running_sandbox.sandbox.root / "mail"


def test_sandbox_verbose_brings_the_routine_loggers_back(sandbox):
    levels = """
import logging
result = {name: logging.getLogger(name).getEffectiveLevel()
          for name in ("stripe", "django-q", "wagtail_paid_delivery.inbox", "sandbox.shop")}
"""
    quiet = sandbox.query(levels)
    assert quiet == {
        "stripe": logging.WARNING,
        "django-q": logging.WARNING,
        "wagtail_paid_delivery.inbox": logging.WARNING,
        "sandbox.shop": logging.INFO,
    }
    sandbox.env["SANDBOX_VERBOSE"] = "1"
    assert set(sandbox.query(levels).values()) == {logging.INFO}


def test_shop_lines_are_coloured_only_on_a_terminal():
    from sandbox.home.logs import BOLD_GREEN, ShopHandler

    class Console(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    record = logging.makeLogRecord({"msg": "Download served: %s", "args": ("Field Guide",)})
    for tty, expected in (
        (False, "[shop] Download served: Field Guide"),
        (True, f"{BOLD_GREEN}[shop] Download served: Field Guide\033[0m"),
    ):
        console = Console(tty)
        ShopHandler(console).emit(record)
        assert console.getvalue() == expected + "\n"


def test_trigger_names_the_host_and_port_it_could_not_reach(sandbox):
    closed = free_port()  # nothing listens there
    env = {**sandbox.env, "SANDBOX_PORT": str(closed)}
    result = subprocess.run(
        [*MANAGE, "trigger", "pay", "cs_test_nobody"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert f"Could not reach the Stripe emulator at 127.0.0.1:{closed} " in result.stderr
    assert f"(http://127.0.0.1:{closed}/stripe-emulator)" in result.stderr
    assert "Connection refused" in result.stderr and "SANDBOX_PORT" in result.stderr
    # stripe-python's paragraph and a logged warning would bury the sentence.
    assert "support@stripe.com" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_stops_runserver_and_qcluster_with_nothing_left(sandbox):
    running = RunningSandbox(sandbox)
    try:
        running.wait_until_ready()
        groups = running.process_groups()
        assert len(groups) == 2
        # Both servers and their children (autoreloader, cluster workers) are up.
        before = live_processes(sandbox, groups)
        assert any("runserver" in p for p in before) and any("qcluster" in p for p in before)
        assert len(before) >= 4
    finally:
        returncode = running.stop(signal.SIGINT)

    assert returncode == 0, running.output
    assert "stopped." in running.output
    assert "did not stop" not in running.output
    deadline = time.monotonic() + 5
    while (left := live_processes(sandbox, groups)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []


# In a browser


@pytest.mark.browser
def test_browser_home_lists_the_products_and_the_bundle_with_prices_and_opens_a_product(
    chromium_path, running_sandbox, headless_chromium
):
    page = headless_chromium.new_page()
    base = running_sandbox.sandbox.base_url
    try:
        page.goto(base + "/", wait_until="networkidle")
        cards = page.locator(".product-card")
        assert cards.count() == 4
        texts = [cards.nth(i).inner_text() for i in range(4)]
        field_guide = next(t for t in texts if "Field Guide (PDF)" in t)
        sample_pack = next(t for t in texts if "Sample Pack (ZIP)" in t)
        bundle = next(t for t in texts if "Shoreline Bundle" in t)
        assert "$24.00" in bundle
        assert "$19.00" in field_guide
        assert "¥1,200" in sample_pack and "¥1,200." not in sample_pack
        assert "Sandbox Shop" in page.locator("header").inner_text()
        # The stylesheet loaded: the card grid is laid out, not an unstyled list.
        assert page.locator(".product-grid").evaluate("e => getComputedStyle(e).display") == "grid"

        page.get_by_role("link", name="Sample Pack (ZIP)").click()
        page.wait_for_load_state("networkidle")
        assert page.url == base + "/sample-pack/"
        assert page.locator("h1").inner_text() == "Sample Pack (ZIP)"
        assert page.locator(".pd-price").inner_text().endswith("¥1,200")
        assert "Sample Pack" in page.locator(".pd-files").inner_text()
    finally:
        page.close()


NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.mark.browser
def test_browser_a_purchase_on_a_phone_fits_every_emulator_page_and_is_logged(
    chromium_path, running_sandbox, headless_chromium
):
    """390 px wide: buy on the emulator's page, read Stripe's receipt, see the dashboard, then
    download; no page scrolls sideways, the file is labelled by its type, the console says so."""
    base = running_sandbox.sandbox.base_url
    context = headless_chromium.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto(base + "/field-guide/", wait_until="networkidle")
        assert "PDF ·" in page.locator(".pd-files").inner_text()
        page.get_by_role("button", name="Buy now").click()
        page.wait_for_load_state("networkidle")
        assert "/stripe-emulator/pay/" in page.url
        assert page.evaluate(NO_SIDEWAYS_SCROLL), "checkout"
        page.fill("#email", "phone@example.com")
        page.fill("#promotion_code", "SANDBOX20")
        page.locator("button.pay").click()
        page.wait_for_url("**/thanks/**")
        to_downloads = page.get_by_role("link", name="Go to your downloads")
        for _ in range(20):  # the webhook may be a moment behind the redirect
            if to_downloads.count():
                break
            page.wait_for_timeout(500)
            page.reload(wait_until="networkidle")
        success = page.url
        receipt = page.get_by_role("link", name="Stripe's receipt for this payment")
        page.goto(receipt.get_attribute("href"), wait_until="networkidle")
        assert "Promotion code SANDBOX20" in page.inner_text("main")
        assert page.evaluate(NO_SIDEWAYS_SCROLL), "receipt"
        page.goto(base + "/stripe-emulator/", wait_until="networkidle")
        assert "phone@example.com" in page.inner_text("main")
        assert page.evaluate(NO_SIDEWAYS_SCROLL), "dashboard"

        page.goto(success, wait_until="networkidle")
        page.get_by_role("link", name="Go to your downloads").click()
        page.wait_for_load_state("networkidle")
        assert page.evaluate(NO_SIDEWAYS_SCROLL), "download page"
        assert page.locator(".meta").first.inner_text().startswith("PDF · ")
        with page.expect_download() as download:
            page.get_by_role("button", name="Download").first.click()
        assert download.value.suggested_filename == "field-guide.pdf"
    finally:
        context.close()
    deadline = time.monotonic() + 10
    while "[shop] Download served: Field Guide (order " not in running_sandbox.output:
        assert time.monotonic() < deadline, running_sandbox.output[-3000:]
        time.sleep(0.2)


def emailed_sign_in_link(folder: Path, address: str, deadline: float, output: str) -> str:
    """The library sign-in link of the last email to ``address`` in the sandbox's mail folder."""
    import email
    from email import policy

    while True:
        for path in sorted(folder.glob("*")):
            message = email.message_from_string(
                path.read_text(errors="replace"), policy=policy.default
            )
            if address not in str(message["To"]) or "sign" not in str(message["Subject"]).lower():
                continue
            body = message.get_body(preferencelist=("plain",)).get_content()
            found = re.search(r"https?://\S+/shop/library/d/[A-Za-z0-9_-]{43}/", body)
            if found:
                return found.group(0)
        assert time.monotonic() < deadline, output[-3000:]
        time.sleep(0.5)


@pytest.mark.browser
def test_browser_the_winter_chapter_and_the_tide_table_open_after_buying(
    chromium_path, running_sandbox, headless_chromium
):
    """The seeded buyers-only page and block, end to end with the emulator: a stranger gets the
    Field Guide's page and a teaser; after buying from the restricted page and signing in to
    the library by email, the chapter and the tide table are there. Takes the README's
    buyers-only screenshots (with ``WPD_SCREENSHOTS=1``)."""
    from tests.screenshots import SCREENSHOTS

    sandbox = running_sandbox.sandbox
    base = sandbox.base_url
    context = headless_chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    shot = lambda name: page.screenshot(  # noqa: E731
        path=str(SCREENSHOTS / f"buyers-only-{name}.png"), full_page=True
    )
    try:
        answer = page.goto(base + "/winter-chapter/", wait_until="networkidle")
        assert answer.status == 403
        assert "private" in answer.headers["cache-control"]
        assert "Cookie" in answer.headers["vary"]
        assert page.get_by_text(
            "The page you opened is for buyers of Field Guide (PDF)."
        ).is_visible()
        assert "dunlins" not in page.content()
        shot("page-stranger")
        page.goto(base + "/birding-notes/", wait_until="networkidle")
        assert page.get_by_text("The season's tide table is for buyers").is_visible()
        assert "spring tides" not in page.content()
        shot("block-stranger")

        page.goto(base + "/winter-chapter/", wait_until="networkidle")
        page.get_by_role("button", name="Buy now").click()
        page.wait_for_url("**/stripe-emulator/pay/**")
        page.fill("#email", "winter@example.com")
        page.locator("button.pay").click()
        page.wait_for_url("**/thanks/**")

        page.goto(base + "/shop/library/", wait_until="networkidle")
        page.get_by_label("Email address").fill("winter@example.com")
        page.get_by_role("button", name="Email me a sign-in link").click()
        page.wait_for_load_state()
        link = emailed_sign_in_link(
            sandbox.root / "mail",
            "winter@example.com",
            time.monotonic() + 90,
            running_sandbox.output,
        )
        page.goto(link, wait_until="networkidle")
        page.get_by_role("button", name="Open my downloads").click()
        page.wait_for_load_state()

        answer = page.goto(base + "/winter-chapter/", wait_until="networkidle")
        assert answer.status == 200
        assert "no-store" in answer.headers["cache-control"]
        assert page.get_by_text("the dunlins arrive in their thousands").is_visible()
        shot("page-buyer")
        page.goto(base + "/birding-notes/", wait_until="networkidle")
        assert page.get_by_text("spring tides on the 3rd").is_visible()
        shot("block-buyer")
    finally:
        context.close()

    chapter_id = sandbox.query(
        "from sandbox.home.models import ArticlePage\n"
        "result = ArticlePage.objects.get(slug='winter-chapter').pk"
    )
    editor = headless_chromium.new_context(viewport={"width": 1280, "height": 800})
    page = editor.new_page()
    try:
        page.goto(base + "/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.locator("button[type=submit]").click()
        page.wait_for_load_state("networkidle")
        page.goto(f"{base}/admin/pages/{chapter_id}/edit/", wait_until="networkidle")
        assert (
            "Buyers only: this page is shown only to buyers of “Field Guide (PDF)”."
            in page.locator(".messages").inner_text()
        )
        page.get_by_role("button", name="Actions").first.click()
        menu_item = page.get_by_role("link", name="Buyers only")
        assert menu_item.is_visible()
        page.wait_for_timeout(500)  # the menu fades in
        page.screenshot(path=str(SCREENSHOTS / "buyers-only-editor-menu.png"))
        menu_item.click()
        page.wait_for_load_state("networkidle")
        assert page.get_by_text("Only buyers of").first.is_visible()
        assert page.get_by_text("Field Guide (PDF)").first.is_visible()
        page.screenshot(path=str(SCREENSHOTS / "buyers-only-editor-form.png"), full_page=True)
    finally:
        editor.close()
