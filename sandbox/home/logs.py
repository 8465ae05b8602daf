"""The sandbox's console: what a buyer did stands out, routine chatter stays quiet.

``ShopHandler`` prints the shop's purchase lines (checkout started, paid, email sent, download
served, refunded) with a ``[shop]`` prefix, in bold green when the console is a terminal.
``LOGGING`` in the sandbox settings sends it the package's own "paid" and "email sent" lines and
the sandbox's (``activity.py``), and quiets the routine loggers unless ``SANDBOX_VERBOSE=1``.
Loaded while logging is configured, before the apps: no Django imports here.
"""

from __future__ import annotations

import logging

BOLD_GREEN = "\033[1;32m"
RESET = "\033[0m"


class ShopHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``[shop] …`` on the console, coloured only when the console is a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"[shop] {super().format(record)}"
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            return f"{BOLD_GREEN}{line}{RESET}"
        return line


class HideEmulatorApiRequests(logging.Filter):
    """Drops runserver's access-log lines for the emulator's API (``/stripe-emulator/v1/…``).

    They are the shop's own Stripe calls (each checkout, each re-read of a payment, the
    ten-minute reconciliation) seen from the other side: routine, like stripe-python's request
    log. The emulator's hosted pages and dashboard, what a person opens, still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return " /stripe-emulator/v1/" not in record.getMessage()
