"""Outbound webhook calls: the ``webhook`` step, its signed POSTs, retries and circuit breaker."""
