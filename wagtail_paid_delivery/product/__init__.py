"""Optional app: the concrete ProductPage and ProductFile for sites on Wagtail's own Page."""
