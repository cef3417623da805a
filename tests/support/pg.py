"""Test support: placeholder, filled in by its owner."""
