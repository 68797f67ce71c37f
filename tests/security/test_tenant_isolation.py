"""Tenant isolation and admin-only routes, against the real gateway with real keys.

A client key reads and labels only its own tenant's predictions; every route that is not on the
short list of client routes refuses a client key with 403. The routes are read from `app.routes`,
so a new route without an admin guard (and not deliberately added to `CLIENT_ROUTES`) fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import pytest
from fastapi.routing import APIRoute

from tests.security.conftest import SecureGateway
from tests.upstream_double import JSONReply, chat_response

MCQ_STEPS = [(" B", -0.4, [(" B", -0.4), (" A", -1.6), (" C", -3.0), (" D", -4.2)])]

# Routes a client key may call (everything else under /v1 is admin-only).
CLIENT_ROUTES = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("POST", "/v1/feedback"),
    ("GET", "/v1/feedback/{id}"),
    ("GET", "/v1/calibration/models"),
    ("GET", "/v1/calibration/models/{model}"),
    ("GET", "/v1/calibration/models/{model}/reliability"),
    ("GET", "/v1/calibration/models/{model}/reliability.svg"),
    ("GET", "/v1/calibration/models/{model}/shift"),
}
# Unauthenticated by design: probes and the scrape endpoint (which has its own `metrics_key`).
PUBLIC_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


def _walk(routes: Iterable, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every API route, including those of included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", prefix + route.path_format)
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                yield method, path
        elif hasattr(route, "include_context"):  # FastAPI's lazily included router
            context = route.include_context
            yield from _walk(context.included_router.routes, prefix + (context.prefix or ""))
        elif hasattr(route, "routes"):  # a mounted router
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def app_routes() -> list[tuple[str, str]]:
    from service.app import create_app
    from service.settings import load_settings

    return sorted(set(_walk(create_app(load_settings()).routes)))


ADMIN_ROUTES = [r for r in app_routes() if r not in CLIENT_ROUTES | PUBLIC_ROUTES]


def _concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "mcq", path)


def test_the_route_lists_match_the_app():
    routes = set(app_routes())
    assert routes >= CLIENT_ROUTES | PUBLIC_ROUTES
    # The admin surface this test guards (a sanity check that the walk found the routers).
    for expected in [
        ("POST", "/v1/calibration/models/{model}/refit"),
        ("PUT", "/v1/calibration/models/{model}/profile"),
        ("POST", "/v1/calibration/models/{model}/rollback"),
        ("POST", "/v1/calibration/models/{model}/prompt-optimizations"),
    ]:
        assert expected in ADMIN_ROUTES


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES, ids=[" ".join(r) for r in ADMIN_ROUTES])
def test_admin_route_refuses_a_client_key(secure: SecureGateway, method: str, path: str):
    with secure.client(secure.keys.acme) as http:
        response = http.request(method, _concrete(path), json={})
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "admin_required"
    with secure.client(None) as http:
        assert http.request(method, _concrete(path), json={}).status_code == 401


@pytest.mark.parametrize(("method", "path"), sorted(CLIENT_ROUTES), ids=" ".join)
def test_client_routes_do_not_need_admin(secure: SecureGateway, double, method, path):
    with secure.client(secure.keys.acme) as http:
        response = http.request(method, _concrete(path), json={})
    assert response.status_code not in (401, 403), response.text


def _ask(secure: SecureGateway, key: str, double) -> str:
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    with secure.client(key) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "mcq", "messages": [{"role": "user", "content": "Pick one."}]},
        )
    assert response.status_code == 200, response.text
    return response.json()["calibration"]["id"]


def test_a_client_labels_and_reads_only_its_own_tenants_predictions(secure, double):
    keys = secure.keys
    mine = _ask(secure, keys.acme, double)
    theirs = _ask(secure, keys.globex, double)
    with secure.client(keys.acme) as acme, secure.client(keys.globex) as globex:
        # Label: another tenant's prediction is refused, alone or hidden in a batch.
        refused = acme.post("/v1/feedback", json={"id": theirs, "correct": True})
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
        batch = [{"id": mine, "correct": True}, {"id": theirs, "correct": False}]
        assert acme.post("/v1/feedback", json=batch).status_code == 403
        assert secure.store.get_feedback(mine) is None  # the batch is atomic
        # Own predictions: labelled and read back.
        assert acme.post("/v1/feedback", json={"id": mine, "label": "B"}).status_code == 200
        assert globex.post("/v1/feedback", json={"id": theirs, "label": "A"}).status_code == 200
        assert acme.get(f"/v1/feedback/{mine}").json()["label"] == "B"
        # Read: another tenant's feedback is refused, and nothing of it leaks in the error.
        peek = acme.get(f"/v1/feedback/{theirs}")
        assert peek.status_code == 403 and '"A"' not in peek.text
        assert globex.get(f"/v1/feedback/{mine}").status_code == 403
        # A second key of the same tenant is the same tenant.
        with secure.client(keys.acme2) as acme2:
            assert acme2.get(f"/v1/feedback/{mine}").status_code == 200
    # Admins see every tenant (operators audit feedback).
    with secure.client(keys.stored_admin) as admin:
        assert admin.get(f"/v1/feedback/{theirs}").json()["tenant"] == "globex"


def test_the_stored_feedback_keeps_the_key_that_gave_it(secure, double):
    keys = secure.keys
    pid = _ask(secure, keys.acme2, double)
    with secure.client(keys.acme2) as http:
        assert http.post("/v1/feedback", json={"id": pid, "correct": True}).status_code == 200
        assert "key_id" not in http.get(f"/v1/feedback/{pid}").json()  # clients: not shown
    key_id = secure.store.find_key(keys.acme2).id
    assert secure.store.get_feedback(pid).key_id == key_id
    with secure.client(keys.admin) as admin:  # admins audit who labelled what
        assert admin.get(f"/v1/feedback/{pid}").json()["key_id"] == key_id
