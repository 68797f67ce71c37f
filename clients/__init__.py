"""What users run against a running service: SDK, CLI, reports."""
