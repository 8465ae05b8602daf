"""How two spellings of one address are told to be the same mailbox.

Its own module because the buyer data screens, the outbox (update emails) and unsubscribing all
compare addresses, and ``buyer_data`` imports the desk, which imports the outbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import string

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def address_key(email: str) -> str:
    """What two spellings of one address have in common.

    The local part's ASCII letters in lower case, other characters as they are (mail servers
    may tell them apart, and a look-alike must not match); the domain in its IDNA (ASCII) form,
    lower case, as DNS resolves it (``BÜCHER.de`` is ``bücher.de``).
    """
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return email.strip().translate(ASCII_LOWER)
    # Not a valid IDNA name: compared as typed (ASCII case aside).
    with contextlib.suppress(UnicodeError):
        domain = domain.encode("idna").decode("ascii")
    return f"{local.translate(ASCII_LOWER)}@{domain.translate(ASCII_LOWER)}"


def address_digest(email: str) -> str:
    """The SHA-256 of ``address_key(email)``: how update notices and unsubscribes remember an
    address without keeping it."""
    return hashlib.sha256(address_key(email).encode()).hexdigest()


def same_address(one: str, other: str) -> bool:
    """Whether ``one`` and ``other`` are the same mailbox (an empty address is nobody's)."""
    return bool(one.strip()) and bool(other.strip()) and address_key(one) == address_key(other)
