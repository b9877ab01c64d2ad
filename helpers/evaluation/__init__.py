"""Metrics and verdicts: classification metrics, the paired interval, Holm, verdict text."""
