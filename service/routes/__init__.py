"""HTTP routes of the gateway, one module per concern (each exports a `router`).

`proxy` (the OpenAI-compatible routes), `health` (liveness/readiness), `feedback` (labels),
`metrics` (Prometheus exposition).
"""
