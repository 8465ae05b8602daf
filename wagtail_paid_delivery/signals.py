"""Signals other code may listen to."""

from django.dispatch import Signal

#: Sent once when a purchase becomes paid (on commit). kwargs: ``purchase``.
purchase_paid = Signal()
#: Sent when a purchase loses access (refund, dispute, editor's revoke). kwargs: ``purchase``,
#: ``reason``.
purchase_revoked = Signal()
#: Sent when a suspended purchase regains access (dispute won). kwargs: ``purchase``.
purchase_restored = Signal()
#: Sent after a file response was started. kwargs: ``request``, ``link``, ``file``.
download_served = Signal()
