"""Shared machinery: config, data, metrics, label store, runs and caching, plots."""
