"""A runnable Wagtail site that uses wagtail-paid-delivery. Not part of the package."""
