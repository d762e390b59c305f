"""Backbone registry (placeholder; see efficientnet_lite0.py / efficientnet_b0.py)."""
