"""``manage.py trigger``: make a payment event happen at the Stripe stand-in (``stripe trigger``).

A sandbox command (``python sandbox/manage.py trigger …``), not part of the package: it drives
the emulator's control endpoint, which real Stripe does not have. Only with ``STRIPE_API_BASE``
(the sandbox's emulator): the stand-in changes its own state and sends the signed webhooks
Stripe would send, so the shop reacts exactly as it would to Stripe. Against real Stripe this
refuses: events are re-read from Stripe, so an invented event would be undone; use the Stripe
CLI and Dashboard there (see the README).
"""

from __future__ import annotations

import argparse
import re
import textwrap
import uuid
from typing import Any
from urllib.parse import urlsplit

import stripe
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)

from wagtail_paid_delivery.conf import SETTINGS_NAME, app_settings
from wagtail_paid_delivery.models import Purchase
from wagtail_paid_delivery.stripe_api import StripeUnavailable

from ...control import emulator_control

#: command action → (emulator action, what happens, the events that follow).
ACTIONS: dict[str, tuple[str, str]] = {
    "pay": ("pay", "the buyer pays by card: checkout.session.completed, payment_intent.succeeded"),
    "pay-later": (
        "pay_later",
        "the buyer pays by bank debit: checkout.session.completed (unpaid, purchase pending)",
    ),
    "succeed": ("succeed", "the bank debit clears: checkout.session.async_payment_succeeded"),
    "fail": ("fail", "the bank debit fails: checkout.session.async_payment_failed"),
    "decline": ("decline", "the card is declined; the session stays open"),
    "expire": ("expire", "the session expires unpaid: checkout.session.expired"),
    "refund": ("refund", "refund in full, or --amount in minor units: charge.refunded"),
    "dispute": ("dispute", "the buyer's bank disputes the charge: charge.dispute.created"),
    "win": ("win", "the dispute is decided for the shop: charge.dispute.closed (won)"),
    "lose": ("lose", "the dispute is decided for the buyer: charge.dispute.closed (lost)"),
}


class _Formatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the actions list's line breaks."""


class Command(BaseCommand):
    help = textwrap.fill(
        "Make a payment event happen for one purchase at the Stripe stand-in (the sandbox's "
        "emulator, STRIPE_API_BASE), which then sends the signed webhooks Stripe would send. "
        "Refuses against real Stripe: use the Stripe CLI there. Exit status: 0 done, 1 the "
        "stand-in refused or could not be reached, 2 wrong usage or configuration.",
        width=79,
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        actions = "\n".join(f"  {name:<10} {what}" for name, (_, what) in ACTIONS.items())
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("epilog", f"actions:\n{actions}")
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=list(ACTIONS), help="what happens (see below)")
        parser.add_argument(
            "purchase",
            help="the purchase's public id (as in the admin) or its Checkout Session id (cs_…)",
        )
        parser.add_argument(
            "--amount",
            type=int,
            help="refund: the amount in minor units (1250 for 12.50); default: all that is left",
        )
        parser.add_argument(
            "--email", default="buyer@example.com", help="pay, pay-later: the buyer's email"
        )
        parser.add_argument(
            "--hold-webhook",
            action="store_true",
            help=(
                "make the events but do not deliver them, as if the shop's webhook endpoint "
                "were down (they are listed at /v1/events: `manage.py reconcile` heals)"
            ),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if not app_settings.STRIPE_API_BASE:
            raise CommandError(
                f"{SETTINGS_NAME}['STRIPE_API_BASE'] is not set, so this site talks to real "
                "Stripe, where only Stripe makes payments happen. Use the Stripe CLI and a test "
                "card instead (see the README, 'Trying events in test mode').",
                returncode=2,
            )
        if options["amount"] is not None and (action != "refund" or options["amount"] < 1):
            raise CommandError("--amount is a positive amount for refund only.", returncode=2)
        session_id = _session_id(options["purchase"])
        params: dict[str, Any] = {}
        if action in ("pay", "pay-later"):
            params["email"] = options["email"]
        if options["amount"] is not None:
            params["amount"] = options["amount"]
        if options["hold_webhook"]:
            params["webhook"] = "hold"
        try:
            answer = emulator_control(session_id, ACTIONS[action][0], params)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except StripeUnavailable as exc:
            raise CommandError(
                unreachable(app_settings.STRIPE_API_BASE, str(exc)), returncode=1
            ) from exc
        except stripe.StripeError as exc:
            message = getattr(exc, "user_message", None) or str(exc)
            raise CommandError(f"The Stripe stand-in refused: {message}", returncode=1) from exc
        session = answer.get("session") or {}
        events = answer.get("events") or []
        self.stdout.write(
            self.style.SUCCESS(
                f"{action}: session {session_id} is {session.get('status')}/"
                f"{session.get('payment_status')}"
            )
        )
        verb = "makes (webhook held back)" if answer.get("webhooks") == "held" else "sends"
        for event_type in events:
            self.stdout.write(f"  {verb} {event_type}")


def unreachable(api_base: str, error: str) -> str:
    """Which host and port were tried, why it failed in a few words, and what to check."""
    where = urlsplit(api_base)
    host_port = f"{where.hostname}:{where.port or (443 if where.scheme == 'https' else 80)}"
    # stripe-python's message wraps the socket error in a paragraph; keep the socket's words.
    reason = re.search(r"\[Errno -?\d+\] ([^\"')]+)", error)
    return (
        f"Could not reach the Stripe emulator at {host_port} ({api_base}): "
        f"{reason.group(1).strip() if reason else error.strip()}. Is the sandbox running on that "
        "port? This command uses SANDBOX_PORT (default 8000) like `make sandbox`: run it with the "
        "same SANDBOX_PORT as the sandbox."
    )


def _session_id(reference: str) -> str:
    reference = reference.strip()
    if reference.startswith("cs_"):
        return reference
    try:
        public_id = uuid.UUID(reference)
    except ValueError:
        raise CommandError(
            f"{reference!r} is neither a purchase id (a UUID) nor a Checkout Session id (cs_…).",
            returncode=2,
        ) from None
    purchase = Purchase.objects.filter(public_id=public_id).first()
    if purchase is None:
        raise CommandError(f"No purchase {public_id}.", returncode=2)
    if not purchase.stripe_checkout_session_id:
        raise CommandError(f"Purchase {public_id} has no Checkout Session.", returncode=2)
    return purchase.stripe_checkout_session_id
