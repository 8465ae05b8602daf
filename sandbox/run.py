#!/usr/bin/env python
"""Start the sandbox: migrate, seed, then ``runserver`` and a django-q2 cluster side by side.

    python sandbox/run.py          # what ``make sandbox`` runs

Each server runs in its own process group (its own session), so the terminal's Ctrl-C reaches
only this launcher, which then stops both groups as a whole: runserver's autoreloader child and
the cluster's worker processes go with them, and nothing is left running. SIGTERM and SIGHUP do
the same. If either server exits on its own, the other is stopped too.

Where to click (the shop, the admin and its login, the emulator's dashboard, the mail folder) is
printed once, when the site answers an HTTP request, after the servers' start-up chatter.
``SANDBOX_VERBOSE=1`` also shows every migration and the routine log lines the settings quiet.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "sandbox" / "manage.py")]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = 10.0


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


def group_alive(pgid: int) -> bool:
    """True while any process of the group exists (zombies waiting for init do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp.
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return not Path("/proc/self").exists()  # no /proc (not Linux): trust killpg


def stop_groups(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Ask each server to stop, wait for its whole group to empty, SIGKILL whatever is left.

    Only the group leader gets the first SIGTERM: qcluster's sentinel then stops its workers in
    order (signalling them all at once leaves it waiting on workers that are already gone).
    A group whose leader has exited but which still has members gets SIGTERM as a whole.
    """
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    if wait_for_groups(children, GRACE_SECONDS):
        return
    kill_groups(children)


def sweep_groups(children: dict[str, subprocess.Popen[bytes]]) -> bool:
    """One pass over the groups: True while any has members. SIGTERMs leaderless groups."""
    alive = False
    for proc in children.values():
        if proc.poll() is None:  # also reaps the leader once it has exited
            alive = True
        elif group_alive(proc.pid):
            alive = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    return alive


def wait_for_groups(children: dict[str, subprocess.Popen[bytes]], timeout: float) -> bool:
    """Sweep the groups until all are empty (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sweep_groups(children):
            return True
        time.sleep(0.1)
    return False


def kill_groups(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGKILL every group that still has members, then reap the leaders."""
    for name, proc in children.items():
        if group_alive(proc.pid):
            log(f"{name} did not stop within {GRACE_SECONDS:.0f}s; killing it.")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in children.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def wait_for_site(
    base: str, timeout: float, children: dict[str, subprocess.Popen[bytes]], received: list[int]
) -> bool:
    """Poll until the site answers an HTTP request (any status): False if ``timeout`` seconds
    pass, a server exits or a stop signal arrives first.

    An open port is not enough: runserver's autoreloader may still be importing the project.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not received:
        if any(proc.poll() is not None for proc in children.values()):
            return False
        try:
            with urllib.request.urlopen(base + "/", timeout=5):  # noqa: S310 (our own http URL)
                return True
        except urllib.error.HTTPError:
            return True  # an answer all the same (a 404, a 500 with its traceback in the log)
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def migrate_and_seed(port: int, env: dict[str, str], verbose: bool) -> list[str] | None:
    """Run ``migrate`` then ``seed_sandbox``; the seed's summary (where to click), or None.

    The seed's changes are shown at once; its summary is held back for ``log_ready``.
    """
    migrate = ["migrate", "--noinput", *([] if verbose else ["--verbosity", "0"])]
    seed = ["seed_sandbox", "--port", str(port), "--skip-checks"]
    log("manage.py migrate" + ("" if verbose else " (the first run takes a minute)"))
    if subprocess.run(MANAGE + migrate, env=env, cwd=ROOT, check=False).returncode:
        log("manage.py migrate failed.")
        return None
    log("manage.py seed_sandbox")
    result = subprocess.run(
        MANAGE + seed, env=env, cwd=ROOT, check=False, stdout=subprocess.PIPE, text=True
    )
    lines = result.stdout.splitlines()
    cut = next((i for i, line in enumerate(lines) if line.startswith("Site:")), len(lines))
    for line in lines[:cut]:
        if line.strip():
            print(line, flush=True)
    if result.returncode:
        log("manage.py seed_sandbox failed.")
        return None
    return lines[cut:]


def start_servers(
    children: dict[str, subprocess.Popen[bytes]], port: int, env: dict[str, str]
) -> None:
    """Start runserver and qcluster, adding each to ``children`` as soon as it exists.

    Filled in place so that, if starting the second fails, the caller still stops the first.
    """
    for name, command in (
        ("runserver", ["runserver", f"127.0.0.1:{port}"]),
        ("qcluster", ["qcluster"]),
    ):
        children[name] = subprocess.Popen(
            MANAGE + command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own session and process group: pgid == pid
        )
        log(f"started {name} (process group {children[name].pid})")


def log_ready(summary: list[str]) -> None:
    """Where to click, framed so it stands out from the servers' own lines."""
    rule = "─" * 72
    print("", rule, *summary, "Press Ctrl-C to stop.", rule, "", sep="\n", flush=True)


def watch(children: dict[str, subprocess.Popen[bytes]], received: list[int]) -> str | None:
    """Wait for a stop signal (None) or for a server to exit on its own (its name)."""
    exited: str | None = None
    while not received and exited is None:
        exited = next((n for n, p in children.items() if p.poll() is not None), None)
        time.sleep(0.2)
    return exited


def main() -> int:
    port = int(os.environ.get("SANDBOX_PORT") or 8000)
    verbose = os.environ.get("SANDBOX_VERBOSE", "") not in ("", "0")
    env = {**os.environ, "SANDBOX_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    env.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")

    if port_in_use(port):
        log(f"Port {port} is already in use. Choose another: SANDBOX_PORT=8001 make sandbox")
        return 2
    summary = migrate_and_seed(port, env, verbose)
    if summary is None:
        return 1

    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    # Installed before the servers start, so a signal in between is not lost.
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)

    children: dict[str, subprocess.Popen[bytes]] = {}
    exited: str | None = None
    try:
        start_servers(children, port, env)
        if wait_for_site(f"http://127.0.0.1:{port}", 120, children, received):
            log_ready(summary)
        elif not received and all(proc.poll() is None for proc in children.values()):
            log(f"The site did not answer on port {port} within 120 s; see the lines above.")
        exited = watch(children, received)
    finally:
        # Stop both on any exit path, including an exception while starting or watching them.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        log("stopping runserver and qcluster…")
        stop_groups(children)
        log("stopped.")

    if exited is not None:
        log(f"{exited} exited with status {children[exited].returncode}.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
