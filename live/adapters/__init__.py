"""Broker adapters, one folder each, registered by name."""
