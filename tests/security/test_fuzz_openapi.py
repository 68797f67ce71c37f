"""Fuzz the gateway's own OpenAPI spec with schemathesis: no 5xx, documented responses conform.

The gateway is real (uvicorn on loopback, the upstream double behind it, its own SQLite file) and
called with an admin key, so every operation is reachable. Bounded: `MAX_EXAMPLES` per operation.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.conftest import SecureGateway

MAX_EXAMPLES = 30


def _spec() -> dict:
    from service.app import create_app
    from service.settings import load_settings

    return create_app(load_settings()).openapi()


schema = schemathesis.openapi.from_dict(_spec())
# Valid and invalid inputs alike: hostile bodies, parameters and headers must never cause a 5xx.
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    database="none",
)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_documented_responses_conform(case, secure: SecureGateway, double):
    case.call_and_validate(
        base_url=secure.url,
        headers={"Authorization": f"Bearer {secure.keys.admin}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            response_schema_conformance,
            content_type_conformance,
        ],
        timeout=30,
    )
