"""The ``webhook`` workflow step: signed JSON POSTs to configured endpoints, called once
per step execution by the webhook agent, with retries and a circuit breaker per URL.

``spec`` (the step in a workflow), ``body`` (rendering the JSON body in the template
sandbox), ``commands`` (the command the step emits), ``signing`` (the request signature),
``breaker`` (the circuit breaker), ``calls`` (a call's record and how it moves),
``settings`` (the ``webhooks_out`` config section) and ``client`` (the HTTP call).
"""
