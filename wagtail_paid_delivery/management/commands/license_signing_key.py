"""``manage.py license_signing_key``: a new Ed25519 key for ``LICENSE_SIGNING_KEY``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ... import licenses


class Command(BaseCommand):
    help = (
        "Print a new Ed25519 private key for LICENSE_SIGNING_KEY and its public key (what apps "
        "embed to verify license keys offline). Nothing is stored: put the private key in your "
        "settings' secrets. Rotating: keep the old public key in LICENSE_RETIRED_PUBLIC_KEYS."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        private = licenses.generate_signing_key()
        public = licenses.public_key_base64(licenses.load_private_key(private))
        self.stdout.write(f"LICENSE_SIGNING_KEY (secret): {private}\n")
        self.stdout.write(f"Public key (for apps):        {public}\n")
