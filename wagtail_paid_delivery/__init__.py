"""Sell digital files from a Wagtail site and deliver them securely after a Stripe payment."""

__version__ = "0.1.0.dev0"
