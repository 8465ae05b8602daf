from .access import BuyersOnlyRestriction
from .bundles import BundleItem
from .copy import DeliveryCopy
from .events import ClusterHeartbeat, ReconcileMark, StripeEvent
from .library import LibrarySignIn
from .licenses import LicenseActivation, LicenseKey
from .notifications import ShopNotificationPreference
from .outbox import OutboundEmail
from .pages import AbstractProductFile, ProductPageMixin
from .purchases import DownloadEvent, DownloadHandoff, DownloadLink, FileDownloadCount, Purchase
from .updates import UpdateNotice, UpdateOptOut, UpdateRecipient
from .versions import FileVersion

__all__ = [
    "BuyersOnlyRestriction",
    "AbstractProductFile",
    "BundleItem",
    "ClusterHeartbeat",
    "DeliveryCopy",
    "DownloadEvent",
    "DownloadHandoff",
    "DownloadLink",
    "FileDownloadCount",
    "FileVersion",
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
