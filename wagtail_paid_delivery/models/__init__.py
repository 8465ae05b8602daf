from .copy import DeliveryCopy
from .events import StripeEvent
from .pages import AbstractProductFile, ProductPageMixin
from .purchases import DownloadEvent, DownloadLink, FileDownloadCount, Purchase

__all__ = [
    "AbstractProductFile",
    "DeliveryCopy",
    "DownloadEvent",
    "DownloadLink",
    "FileDownloadCount",
    "ProductPageMixin",
    "Purchase",
    "StripeEvent",
]
