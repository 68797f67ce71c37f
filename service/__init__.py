"""The gateway service: everything with side effects (HTTP, store, engine, metrics)."""
