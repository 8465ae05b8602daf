"""The sandbox site's own pages (the home page listing the products) and its seed command."""
