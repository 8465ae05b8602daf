"""Real processes for the process-level fault tests: web servers, task clusters, commands.

Each process the tests start runs in its own session (so its own process group: gunicorn's
workers, the cluster's sentinel, pusher and workers go with it) against the test's own database,
with ``tests.settings_faults`` (loopback only: the shop and the Stripe emulator on 127.0.0.1).
:class:`Processes` (the ``processes`` fixture) kills every group it started when the test ends,
passed or failed, so nothing is left running.

Run as a module, this is also the cluster the tests start (``python -m tests.processes
cluster``): django-q2's ``Cluster``, with the app's thresholds shortened to seconds
(:func:`shorten_thresholds`) and a ticker standing in for the scheduler's minute; and the
scheduler's one-off stand-in (``python -m tests.processes enqueue <task>``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")
#: The Redis database the Redis-broker runs use (each run names its own queue).
REDIS_URL = os.environ.get("WPD_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
#: Process-level fault tests run once, on PostgreSQL (CI runs the suite on both databases).
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES,
    reason="process-level fault tests run once, on PostgreSQL (DATABASE_URL=postgres://…)",
)
#: The ticker's period: how often the cluster's stand-in scheduler queues the sweeps.
TICK_SECONDS = 1.0
#: The sweeps the scheduler runs every minute; the ticker queues them every TICK_SECONDS.
SWEEPS = ("wagtail_paid_delivery.tasks.sweep", "wagtail_paid_delivery.tasks.sweep_emails")


def wait_for(
    condition: Callable[[], Any],
    seconds: float = 30,
    *,
    every: float = 0.2,
    then: Callable[[], Any] | None = None,
) -> None:
    """Poll ``condition`` until it holds; ``then`` runs before each poll (queues a sweep).

    The condition's docstring names it in the timeout's message.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if then is not None:
            then()
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds}s waiting for {condition.__doc__}")


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def require_redis() -> None:
    """Skip (or, under WPD_REQUIRE_SYSTEM_DEPS=1, fail) when Redis is not answering."""
    from tests.conftest import REQUIRE_SYSTEM_DEPS

    if redis_answers():
        return
    message = "Redis is not answering on 127.0.0.1:6379"
    if REQUIRE_SYSTEM_DEPS:
        pytest.fail(f"{message}. WPD_REQUIRE_SYSTEM_DEPS=1 requires it.", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_answers(port: int) -> bool:
    """True once a server on the port answers an HTTP request (any status)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("HEAD", "/")
        connection.getresponse()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def group_alive(pgid: int) -> bool:
    """True while a process of the group lives (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass
class Group:
    """One started process and its group (the process leads a session of its own)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def output(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (last {tail} characters of {self.log}) ---\n{text[-tail:]}"

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
        """Signal the whole group, then wait until none of it is left (SIGKILL at the end)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.popen.poll()  # reaps the leader
            if not group_alive(self.pgid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.popen.wait(timeout=5)


@dataclass
class Processes:
    """Starts processes for one test and kills every group it started when the test ends."""

    env: dict[str, str]
    logs: Path
    groups: list[Group] = field(default_factory=list)

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> Group:
        log = self.logs / f"{name}-{len(self.groups)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        group = Group(name, popen, log)
        self.groups.append(group)
        return group

    def gunicorn(self, port: int, name: str = "web") -> Group:
        """The site (shop and Stripe emulator) in gunicorn on 127.0.0.1:``port``, ready."""
        group = self.start(
            name,
            [sys.executable, "-m", "gunicorn", "django.core.wsgi:get_wsgi_application()"]
            + ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4"]
            + ["--worker-class", "gthread", "--graceful-timeout", "2", "--timeout", "60"]
            # The app is loaded before the port is bound: a connection is answered at once.
            + ["--preload", "--no-control-socket", "--access-logfile", "-"],
        )
        wait_for(self.answers(group, port), 30, every=0.05)
        return group

    def cluster(self, name: str = "cluster") -> Group:
        """A django-q2 cluster (``python -m tests.processes cluster``), running."""
        group = self.start(name, [sys.executable, "-m", "tests.processes", "cluster"])
        wait_for(self.says(group, "running"), 30, every=0.05)
        return group

    def manage(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A management command run to its end (in its own session, killed at the timeout)."""
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def enqueue(self, task: str) -> None:
        """Queue ``task`` as the cluster's scheduler would (from a process of its own)."""
        done = subprocess.run(
            [sys.executable, "-m", "tests.processes", "enqueue", task],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    @staticmethod
    def answers(group: Group, port: int) -> Callable[[], bool]:
        def listening() -> bool:
            if group.popen.poll() is not None:
                raise AssertionError(f"{group.name} exited\n{group.output()}")
            return http_answers(port)

        listening.__doc__ = f"{group.name} to answer HTTP on port {port}"
        return listening

    @staticmethod
    def says(group: Group, text: str) -> Callable[[], bool]:
        def logged() -> bool:
            if group.popen.poll() is not None:
                raise AssertionError(f"{group.name} exited\n{group.output()}")
            return text in group.log.read_text(errors="replace")

        logged.__doc__ = f"{group.name} to log {text!r}"
        return logged

    def outputs(self) -> str:
        return "\n".join(group.output() for group in self.groups)

    def kill_all(self) -> None:
        for group in reversed(self.groups):
            group.kill()


def database_url(name: str) -> str:
    """DATABASE_URL with the database ``name`` (the test database this process is using)."""
    base = os.environ["DATABASE_URL"].split("?", 1)[0].rsplit("/", 1)[0]
    return f"{base}/{name}"


@contextlib.contextmanager
def started(env: dict[str, str], logs: Path) -> Iterator[Processes]:
    """A :class:`Processes` whose groups are all killed on the way out, whatever happened."""
    processes = Processes(env=env, logs=logs)
    try:
        yield processes
    finally:
        processes.kill_all()


def delete_redis_queue(url: str, name: str) -> None:
    """Remove what a run left in Redis under its queue name."""
    import redis

    connection = redis.Redis.from_url(url)
    for key in connection.scan_iter(match=f"*{name}*"):
        connection.delete(key)


# The cluster process --------------------------------------------------------------------------


def shorten_thresholds() -> None:
    """Minutes become seconds in this process (and the cluster processes forked from it).

    What a killed worker holds (a claimed event or email) is taken over when its lease ends
    (two Q_CLUSTER timeouts); a task lost with the broker's copy is found by the sweeps once its
    row is ``STUCK_AFTER`` old; the scheduled reconciliation leaves no grace to webhooks in
    flight (the test holds them back on purpose).
    """
    from wagtail_paid_delivery import heartbeat, inbox, outbox, reconciliation, retry

    retry.SHORTEST_LEASE = timedelta(0)
    inbox.STUCK_AFTER = outbox.STUCK_AFTER = timedelta(seconds=2)
    reconciliation.EVENT_GRACE = timedelta(0)
    heartbeat.STALE_AFTER = timedelta(seconds=10)


def run_cluster() -> None:
    """django-q2's cluster, as ``manage.py qcluster`` starts it, plus the stand-in scheduler.

    SIGTERM stops it (django-q2's own handler); the tests mostly SIGKILL the whole group.
    """
    from django_q.brokers import get_broker
    from django_q.cluster import Cluster
    from django_q.tasks import async_task

    shorten_thresholds()
    cluster = Cluster()
    cluster.start()  # forks the sentinel, which forks the pusher, the monitor and the workers

    def tick() -> None:
        broker = get_broker()
        while True:
            for task in SWEEPS:
                async_task(task, broker=broker)
            time.sleep(TICK_SECONDS)

    # Started after the fork: the cluster's processes inherit no half-held lock of this thread.
    threading.Thread(target=tick, name="ticker", daemon=True).start()
    print("cluster running", flush=True)
    sentinel = cluster.sentinel
    while sentinel is not None and sentinel.is_alive():
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    import django

    django.setup()
    if argv[:1] == ["cluster"]:
        run_cluster()
    elif argv[:1] == ["enqueue"] and len(argv) == 2:
        from django_q.tasks import async_task

        async_task(argv[1])
    else:
        sys.exit("usage: python -m tests.processes cluster | enqueue <dotted task>")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_faults")
    main(sys.argv[1:])
