"""Exports: prediction worklists as CSV/JSON, overlay images; all written atomically."""
