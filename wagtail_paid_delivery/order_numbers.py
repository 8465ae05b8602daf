"""Order numbers: the short reference a buyer quotes (on the receipt, in the email, to the desk).

Format: ``ORDER_NUMBER_PREFIX`` (empty by default) and ten symbols in two groups of five, such
as ``7KQ4M-XR9TB``. The symbols are the digits 2-9 and the capital letters without I, L, O and U
(Crockford's base32 without 0 and 1), so nothing is confused when read aloud or typed (0/O,
1/l/I). Random (``secrets``), not derived from the purchase's id: a number says nothing about
how many purchases the shop has and leads to no other buyer's. It grants nothing either: it is
a reference the shop desk searches by, never a key to a download.

30^10 (about 5.9e14) numbers: with a million purchases stored, a new number repeats one with a
chance of about 2e-9; the column is unique, so such an insert fails rather than share a number.
The prefix is stored with the number: changing the setting leaves numbers already sent as they
were.
"""

from __future__ import annotations

import secrets

from .conf import app_settings

#: The symbols of a number: no 0, 1, I, L, O or U.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 10
#: Symbols per group; groups are joined with a hyphen.
GROUP = 5
#: The longest stored number: a 12-character prefix, the symbols and the hyphen.
MAX_LENGTH = 32


def _grouped(code: str) -> str:
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def new_order_number() -> str:
    """A fresh number with this site's prefix (a model field's default)."""
    code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return f"{app_settings.order_number_prefix}{_grouped(code)}"


def search_suffix(query: str) -> str | None:
    """The grouped code a typed ``query`` ends with (``pd-7kq4m xr9tb``, ``7KQ4MXR9TB``…),
    whatever its case, spacing, hyphens or prefix; None when it does not end with one."""
    symbols = "".join(ch for ch in query.upper() if ch.isascii() and ch.isalnum())
    code = symbols[-LENGTH:]
    if len(code) != LENGTH or any(ch not in ALPHABET for ch in code):
        return None
    return _grouped(code)
