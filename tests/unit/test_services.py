"""`app.state` holds one typed `Services`; the old attribute names read through to it."""

from __future__ import annotations

import dataclasses

import pytest

from service.services import AppState, Services


def services() -> Services:
    names = [f.name for f in dataclasses.fields(Services)]
    return Services(**{name: object() for name in names})  # type: ignore[arg-type]


def test_the_service_names_read_through_to_the_container() -> None:
    state = AppState()
    state.services = built = services()
    for field in dataclasses.fields(Services):
        assert getattr(state, field.name) is getattr(built, field.name)
    assert state.prediction_writer is built.writer


def test_an_attribute_set_on_the_state_wins_and_unknown_names_raise() -> None:
    state = AppState()
    with pytest.raises(AttributeError):
        _ = state.store  # nothing built yet
    state.services = services()
    state.store = override = object()
    assert state.store is override
    with pytest.raises(AttributeError):
        _ = state.not_a_service
    assert getattr(state, "key_cache", None) is None
