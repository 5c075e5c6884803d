"""Tests against real services and subprocesses (marker: integration)."""
