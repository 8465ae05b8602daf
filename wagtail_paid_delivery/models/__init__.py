from .copy import DeliveryCopy
from .events import StripeEvent
from .outbox import OutboundEmail
from .pages import AbstractProductFile, ProductPageMixin
from .purchases import DownloadEvent, DownloadHandoff, DownloadLink, FileDownloadCount, Purchase

__all__ = [
    "AbstractProductFile",
    "DeliveryCopy",
    "DownloadEvent",
    "DownloadHandoff",
    "DownloadLink",
    "FileDownloadCount",
    "OutboundEmail",
    "ProductPageMixin",
    "Purchase",
    "StripeEvent",
]
