"""Tick sources for the feeder: synthetic market and replay of files."""
