from .copy import DeliveryCopy
from .events import StripeEvent
from .pages import AbstractProductFile, ProductPageMixin
from .purchases import DownloadEvent, DownloadHandoff, DownloadLink, FileDownloadCount, Purchase

__all__ = [
    "AbstractProductFile",
    "DeliveryCopy",
    "DownloadEvent",
    "DownloadHandoff",
    "DownloadLink",
    "FileDownloadCount",
    "ProductPageMixin",
    "Purchase",
    "StripeEvent",
]
