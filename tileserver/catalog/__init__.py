"""Catalog: products, bands and images, and the stores that keep them."""
