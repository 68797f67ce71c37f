"""Store behaviour on SQLite and PostgreSQL: predictions, feedback, keys, profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from calibrators import Profile
from service.store import (
    DuplicateKeyName,
    FeedbackConflict,
    FeedbackForbidden,
    FeedbackItem,
    InvalidFeedback,
    KeyNotFound,
    PredictionNotFound,
    ProfileNotFound,
    Store,
    StoreUnavailable,
)
from service.store.store import KEY_PREFIX

# ------------------------------------------------------------------ predictions


def test_prediction_round_trips_every_field(store: Store, make_prediction) -> None:
    created = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    record = make_prediction(
        idk_option="E",
        features={"option_logprobs": [-1.5, -0.2], "truncated": True, "n_tokens": 3},
        request_content={"messages": [{"role": "user", "content": "ünïcode ✓"}]},
        created_at=created,
        abstained=True,
        abstain_reason="threshold",
        profile_version=7,
    )
    store.insert_predictions([record])
    assert store.get_prediction(record.id) == record


def test_unknown_prediction_is_none(store: Store) -> None:
    assert store.get_prediction("nope") is None


def test_inserting_a_batch_twice_keeps_one_copy(store: Store, make_prediction) -> None:
    batch = [make_prediction() for _ in range(50)]
    store.insert_predictions(batch)
    store.insert_predictions(batch)
    assert store.count_predictions() == 50


def test_ping_raises_store_unavailable_when_the_database_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = Store.open(f"sqlite:///{path}")
    store.ping()
    store.close()  # drop pooled connections; the next one must open the file again
    for file in tmp_path.iterdir():
        file.unlink()
    path.mkdir()  # a directory where the database file was: SQLite cannot open it
    with pytest.raises(StoreUnavailable):
        store.ping()


def test_unreachable_postgres_is_store_unavailable() -> None:
    store = Store.open("postgresql://nobody@127.0.0.1:1/none", migrate_schema=False)
    with pytest.raises(StoreUnavailable):
        store.ping()
    store.close()


# ------------------------------------------------------------------ feedback


def _one(store: Store, item: FeedbackItem, tenant: str = "acme", admin: bool = False):
    [result] = store.record_feedback([item], tenant, admin)
    return result


def test_feedback_correct_is_stored_as_given(store: Store, make_prediction) -> None:
    pred = make_prediction()
    store.insert_predictions([pred])
    result = _one(store, FeedbackItem(pred.id, correct=True))
    assert (result.correct, result.label, result.true_index, result.status) == (
        True,
        None,
        1,
        "created",
    )


def test_feedback_label_decides_correctness_in_options_mode(store: Store, make_prediction):
    right, wrong = make_prediction(answer="B"), make_prediction(answer="B")
    store.insert_predictions([right, wrong])
    assert _one(store, FeedbackItem(right.id, label=" (B).")).correct is True
    result = _one(store, FeedbackItem(wrong.id, label="D"))
    assert (result.correct, result.label, result.true_index) == (False, "D", 3)


def test_label_outside_the_options_is_invalid(store: Store, make_prediction) -> None:
    pred = make_prediction()
    store.insert_predictions([pred])
    with pytest.raises(InvalidFeedback) as raised:
        _one(store, FeedbackItem(pred.id, label="Z"))
    assert raised.value.id == pred.id
    assert store.get_feedback(pred.id) is None


def test_idk_label_makes_an_abstention_correct(store: Store, make_prediction) -> None:
    options = ["A", "B", "I don't know"]
    abstained = make_prediction(options=options, idk_option="I don't know", abstained=True)
    chose_idk = make_prediction(options=options, idk_option="I don't know", answer="I don't know")
    answered = make_prediction(options=options, idk_option="I don't know", answer="A")
    store.insert_predictions([abstained, chose_idk, answered])
    for pred, expected in ((abstained, True), (chose_idk, True), (answered, False)):
        result = _one(store, FeedbackItem(pred.id, label="I don't know"))
        assert (result.correct, result.true_index) == (expected, 2)


def test_sequence_label_matches_the_answer_prefix(store: Store, make_prediction) -> None:
    preds = [
        make_prediction(mode="sequence", options=None, answer="Paris, France."),
        make_prediction(mode="sequence", options=None, answer="Parisian"),
        make_prediction(mode="sequence", options=None, answer="  PARIS!"),
    ]
    store.insert_predictions(preds)
    got = [_one(store, FeedbackItem(p.id, label="paris")).correct for p in preds]
    assert got == [True, False, True]


def test_repeating_the_same_feedback_is_unchanged(store: Store, make_prediction) -> None:
    pred = make_prediction()
    store.insert_predictions([pred])
    assert _one(store, FeedbackItem(pred.id, label="B")).status == "created"
    assert _one(store, FeedbackItem(pred.id, label="(B)")).status == "unchanged"
    assert _one(store, FeedbackItem(pred.id, correct=True)).status == "unchanged"


def test_conflicting_feedback_is_rejected(store: Store, make_prediction) -> None:
    pred = make_prediction()
    store.insert_predictions([pred])
    _one(store, FeedbackItem(pred.id, correct=True))
    with pytest.raises(FeedbackConflict):
        _one(store, FeedbackItem(pred.id, correct=False))
    with pytest.raises(FeedbackConflict):
        _one(store, FeedbackItem(pred.id, label="C"))


def test_unknown_id_is_not_found(store: Store) -> None:
    with pytest.raises(PredictionNotFound):
        _one(store, FeedbackItem("missing", correct=True))


def test_other_tenants_prediction_is_forbidden_except_to_admins(store: Store, make_prediction):
    pred = make_prediction(tenant="acme")
    store.insert_predictions([pred])
    with pytest.raises(FeedbackForbidden):
        _one(store, FeedbackItem(pred.id, correct=True), tenant="globex")
    result = _one(store, FeedbackItem(pred.id, correct=True), tenant="ops", admin=True)
    assert result.status == "created"
    stored = store.get_feedback(pred.id)
    assert stored is not None
    assert (stored.tenant, stored.prediction_tenant) == ("ops", "acme")


def test_a_failing_item_rolls_back_the_whole_batch(store: Store, make_prediction) -> None:
    good, other = make_prediction(), make_prediction()
    store.insert_predictions([good, other])
    batch = [
        FeedbackItem(good.id, correct=True),
        FeedbackItem("missing", correct=True),
        FeedbackItem(other.id, correct=False),
    ]
    with pytest.raises(PredictionNotFound) as raised:
        store.record_feedback(batch, "acme", False)
    assert raised.value.id == "missing"
    assert store.get_feedback(good.id) is None
    assert store.get_feedback(other.id) is None


def test_the_same_id_twice_in_one_batch(store: Store, make_prediction) -> None:
    pred = make_prediction()
    store.insert_predictions([pred])
    results = store.record_feedback(
        [FeedbackItem(pred.id, correct=True), FeedbackItem(pred.id, label="B")], "acme", False
    )
    assert [r.status for r in results] == ["created", "unchanged"]
    fresh = make_prediction()
    store.insert_predictions([fresh])
    with pytest.raises(FeedbackConflict):
        store.record_feedback(
            [FeedbackItem(fresh.id, correct=True), FeedbackItem(pred.id, correct=False)],
            "acme",
            False,
        )
    assert store.get_feedback(fresh.id) is None


def test_feedback_is_committed_before_returning(store_url: str, make_prediction) -> None:
    first = Store.open(store_url)
    pred = make_prediction()
    first.insert_predictions([pred])
    first.record_feedback([FeedbackItem(pred.id, label="C", correct=None)], "acme", False)
    fresh = Store.open(store_url)
    stored = fresh.get_feedback(pred.id)
    assert stored is not None
    assert (stored.correct, stored.label, stored.true_index) == (False, "C", 2)
    first.close()
    fresh.close()


def test_large_feedback_batch(store: Store, make_prediction) -> None:
    preds = [make_prediction() for _ in range(1200)]
    store.insert_predictions(preds)
    results = store.record_feedback(
        [FeedbackItem(p.id, correct=i % 2 == 0) for i, p in enumerate(preds)], "acme", False
    )
    assert len(results) == 1200
    assert all(r.status == "created" for r in results)


# ------------------------------------------------------------------ keys


def test_created_key_is_found_by_its_plaintext(store: Store) -> None:
    plaintext, record = store.create_key("ci", "client", tenant="acme")
    assert plaintext.startswith(KEY_PREFIX)
    assert len(plaintext) > 40
    assert store.find_key(plaintext) == record
    assert (record.role, record.tenant) == ("client", "acme")
    assert store.find_key(plaintext + "x") is None
    assert store.count_keys() == 1


def test_tenant_defaults_to_default(store: Store) -> None:
    _, record = store.create_key("ops", "admin")
    assert record.tenant == "default"


def test_revoked_key_is_not_found(store: Store) -> None:
    plaintext, record = store.create_key("ci", "client")
    [revoked] = store.revoke_key("ci")
    assert revoked.id == record.id and revoked.revoked_at is not None
    assert store.find_key(plaintext) is None
    assert store.count_keys() == 0
    assert [k.name for k in store.list_keys()] == ["ci"]
    assert store.list_keys(include_revoked=False) == []
    with pytest.raises(KeyNotFound):
        store.revoke_key("ci")


def test_key_names_are_unique_among_active_keys(store: Store) -> None:
    store.create_key("ci", "client")
    with pytest.raises(DuplicateKeyName):
        store.create_key("ci", "admin")
    store.revoke_key("ci")
    store.create_key("ci", "admin")


def test_bad_role_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        store.create_key("x", "root")


def test_plaintext_key_never_reaches_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = Store.open(f"sqlite:///{path}")
    plaintext, _ = store.create_key("ci", "admin")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    secret = plaintext.removeprefix(KEY_PREFIX).encode()
    assert secret not in raw
    assert secret[:16] not in raw


# ------------------------------------------------------------------ profiles


def _profile(model: str = "gemma", task: str = "default", **fields) -> Profile:
    base = Profile.identity(model, task).to_dict()
    base.update(fields)
    return Profile.from_dict(base)


def test_no_profile_before_the_first_save(store: Store) -> None:
    assert store.active_profile("gemma") is None
    assert store.profile_history("gemma") == []


def test_saved_profiles_get_increasing_versions(store: Store) -> None:
    one = store.save_profile(_profile(threshold=0.3), activate=True, reason="first refit")
    two = store.save_profile(_profile(threshold=0.4), activate=False, reason="challenger lost")
    assert (one.version, two.version) == (1, 2)
    active = store.active_profile("gemma")
    assert active is not None and active.version == 1 and active.threshold == 0.3
    history = store.profile_history("gemma")
    assert [(h.version, h.active, h.reason) for h in history] == [
        (2, False, "challenger lost"),
        (1, True, "first refit"),
    ]
    assert history[0].profile == two


def test_activating_replaces_the_active_version(store: Store) -> None:
    store.save_profile(_profile(threshold=0.3), activate=True, reason="v1")
    store.save_profile(_profile(threshold=0.5), activate=True, reason="v2", metrics={"ece": 0.01})
    assert store.active_profile("gemma").version == 2
    assert store.profile_history("gemma")[0].metrics == {"ece": 0.01}
    rolled_back = store.activate_profile_version("gemma", "default", 1)
    assert rolled_back.version == 1
    assert store.active_profile("gemma").threshold == 0.3
    assert sum(h.active for h in store.profile_history("gemma")) == 1
    with pytest.raises(ProfileNotFound):
        store.activate_profile_version("gemma", "default", 9)


def test_profiles_are_kept_per_model_and_task(store: Store) -> None:
    store.save_profile(_profile(task="ocr", threshold=0.2), activate=True, reason="ocr")
    store.save_profile(_profile(model="qwen", threshold=0.9), activate=True, reason="qwen")
    assert store.active_profile("gemma") is None
    assert store.active_profile("gemma", "ocr").threshold == 0.2
    assert store.active_profile("qwen").threshold == 0.9
    assert store.active_profile("qwen").version == 1
    assert store.profile_models() == [("gemma", "ocr"), ("qwen", "default")]


# ------------------------------------------------------------------ refit input


def test_labeled_predictions_join_feedback(store: Store, make_prediction) -> None:
    labeled = make_prediction(answer="A")
    other_task = make_prediction(task="ocr")
    other_model = make_prediction(model="qwen")
    unlabeled = make_prediction()
    store.insert_predictions([labeled, other_task, other_model, unlabeled])
    store.record_feedback(
        [
            FeedbackItem(labeled.id, label="C"),
            FeedbackItem(other_task.id, correct=True),
            FeedbackItem(other_model.id, correct=True),
        ],
        "acme",
        False,
    )
    [item] = store.labeled_predictions("gemma-3-270m")
    assert item.prediction == labeled
    assert (item.correct, item.label, item.true_index) == (False, "C", 2)
    assert len(store.labeled_predictions("gemma-3-270m", None)) == 2
    assert store.labeled_predictions("gemma-3-270m", since=item.labeled_at) == [item]
    later = datetime(2100, 1, 1, tzinfo=UTC)
    assert store.labeled_predictions("gemma-3-270m", since=later) == []


# ------------------------------------------------------------------ leases


def test_a_lease_has_one_holder_until_released_or_expired(store: Store) -> None:
    assert store.acquire_lease("refit:gemma", "replica-1", ttl_s=60)
    assert not store.acquire_lease("refit:gemma", "replica-2", ttl_s=60)
    assert store.acquire_lease("refit:gemma", "replica-1", ttl_s=60)  # renew
    assert store.acquire_lease("refit:qwen", "replica-2", ttl_s=60)  # other name
    store.release_lease("refit:gemma", "replica-2")  # not the holder: no effect
    assert not store.acquire_lease("refit:gemma", "replica-2", ttl_s=60)
    store.release_lease("refit:gemma", "replica-1")
    assert store.acquire_lease("refit:gemma", "replica-2", ttl_s=-1)  # already expired
    assert store.acquire_lease("refit:gemma", "replica-3", ttl_s=60)


def test_racing_for_a_lease_has_one_winner(store_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = [Store.open(store_url) for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        won = list(pool.map(lambda i: stores[i].acquire_lease("job", f"r{i}", 60), range(4)))
    assert sum(won) == 1
    for s in stores:
        s.close()
