"""Kafka plumbing: clients, topics, the embedded brokers, broker quirks, the probe."""
