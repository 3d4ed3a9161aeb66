"""Offline evaluation runs and reports."""
