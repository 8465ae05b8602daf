"""Email backends for the outbox's fault tests, swapped in with ``override_settings``
(Django reads ``EMAIL_BACKEND`` at every send). Each delivers like Django's locmem backend
(``django.core.mail.outbox``) or refuses like a mail server that is down."""

from __future__ import annotations

import smtplib
import threading
import time
from typing import Any

from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection, connections, transaction


class DownBackend(BaseEmailBackend):
    """A mail server that drops the connection at every message.

    ``handed`` keeps each message it was given (what a failed attempt carried: its Message-ID
    and links), for the test to inspect; clear it between tests.
    """

    handed: list[Any] = []

    def send_messages(self, email_messages: Any) -> int:
        DownBackend.handed.extend(email_messages)
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


class SlowBackend(LocmemBackend):
    """Delivers, after a pause long enough for a second worker to try the same email."""

    delay = 0.5

    def send_messages(self, messages: Any) -> int:
        time.sleep(self.delay)
        return super().send_messages(messages)


class LockProbeBackend(LocmemBackend):
    """While a message is being sent, asks another connection to lock rows at once.

    ``targets``: (model, pk) pairs to lock with ``SELECT … FOR UPDATE NOWAIT`` from another
    thread (so another database connection) while the send is in progress. ``probes`` records,
    per target, whether it could lock it (a row lock held by the sender makes NOWAIT fail);
    ``in_transaction`` whether the sending connection was inside a transaction.
    """

    targets: list[tuple[Any, int]] = []
    probes: list[tuple[str, bool | str]] = []
    in_transaction: list[bool] = []

    def send_messages(self, messages: Any) -> int:
        LockProbeBackend.in_transaction.append(connection.in_atomic_block)
        thread = threading.Thread(target=self._probe)
        thread.start()
        thread.join()
        return super().send_messages(messages)

    def _probe(self) -> None:
        try:
            for model, pk in self.targets:
                try:
                    with transaction.atomic():
                        model.objects.select_for_update(nowait=True).get(pk=pk)
                    LockProbeBackend.probes.append((model.__name__, True))
                except Exception as exc:  # a lock held elsewhere: DatabaseError
                    LockProbeBackend.probes.append((model.__name__, f"{type(exc).__name__}"))
        finally:
            connections.close_all()
