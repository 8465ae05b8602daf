from .copy import DeliveryCopy
from .events import ClusterHeartbeat, ReconcileMark, StripeEvent
from .library import LibrarySignIn
from .licenses import LicenseActivation, LicenseKey
from .notifications import ShopNotificationPreference
from .outbox import OutboundEmail
from .pages import AbstractProductFile, ProductPageMixin
from .purchases import DownloadEvent, DownloadHandoff, DownloadLink, FileDownloadCount, Purchase
from .updates import UpdateNotice, UpdateOptOut, UpdateRecipient

__all__ = [
    "AbstractProductFile",
    "ClusterHeartbeat",
    "DeliveryCopy",
    "DownloadEvent",
    "DownloadHandoff",
    "DownloadLink",
    "FileDownloadCount",
    "LibrarySignIn",
    "LicenseActivation",
    "LicenseKey",
    "OutboundEmail",
    "ProductPageMixin",
    "Purchase",
    "ReconcileMark",
    "ShopNotificationPreference",
    "StripeEvent",
    "UpdateNotice",
    "UpdateOptOut",
    "UpdateRecipient",
]
