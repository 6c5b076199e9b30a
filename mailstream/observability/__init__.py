"""Metrics and logs: domain metrics, Faust's sensors, rate-limited logging."""
