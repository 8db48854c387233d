"""Plumbing every layer may use: logs, Prometheus metrics, dataset/registry storage."""
