"""`calibrators.shift`: the embeddings and the permutation test of the input-shift gauge."""

from __future__ import annotations

import random

import numpy as np
import pytest

from calibrators import (
    IMAGE_EMBEDDING_DIM,
    TEXT_EMBEDDING_DIM,
    fit_shift_reference,
    image_embedding,
    shift_test,
    text_embedding,
)
from calibrators.shift import text_embeddings
from service.datasets.vision import draw_scene
from service.shift.inputs import RequestInputs, embed_all

# ---------------------------------------------------------------------------- the test


def test_windows_from_the_reference_distribution_are_flagged_at_most_alpha() -> None:
    """Fresh reference and window each time, from one distribution: the permutation test is
    exact, so the false-alarm rate is at most alpha (here 0.05; 100 trials)."""
    rng = np.random.default_rng(11)
    flagged = 0
    trials = 100
    for trial in range(trials):
        reference = fit_shift_reference(rng.normal(size=(300, 8)), seed=trial)
        result = shift_test(reference, rng.normal(size=(150, 8)), alpha=0.05, permutations=99)
        flagged += result.shifted
    # Binomial(100, 0.05): mean 5, sd 2.2; 12 is 3 sd above the nominal rate.
    assert flagged <= 12, flagged


def test_a_fixed_reference_flags_few_same_distribution_windows() -> None:
    """What the gateway does: one reference, many windows (alpha 0.01, as configured)."""
    rng = np.random.default_rng(12)
    reference = fit_shift_reference(rng.normal(size=(1000, 10)), seed=1)
    flagged = sum(
        shift_test(reference, rng.normal(size=(300, 10)), permutations=99, seed=i).shifted
        for i in range(40)
    )
    assert flagged <= 2, flagged  # <= 5 % of 40 windows


def test_a_shifted_window_is_flagged() -> None:
    rng = np.random.default_rng(13)
    reference = fit_shift_reference(rng.normal(size=(1000, 10)))
    window = rng.normal(size=(300, 10))
    window[:, 2] += 0.5  # half a standard deviation along one of ten dimensions
    result = shift_test(reference, window, alpha=0.01, permutations=199)
    assert result.shifted and result.score > result.threshold
    assert result.p_value == pytest.approx(1 / 200)
    assert (result.n_reference, result.n_window) == (1000, 300)


def test_a_scale_change_is_flagged_too() -> None:
    """Not only the mean: the Gaussian kernel sees a change of spread."""
    rng = np.random.default_rng(14)
    reference = fit_shift_reference(rng.normal(size=(800, 6)))
    result = shift_test(reference, 1.6 * rng.normal(size=(300, 6)), permutations=199)
    assert result.shifted


def test_threshold_and_flag_agree_with_the_p_value() -> None:
    rng = np.random.default_rng(15)
    reference = fit_shift_reference(rng.normal(size=(200, 4)))
    for shift in (0.0, 0.2, 0.4, 0.8):
        result = shift_test(reference, rng.normal(size=(100, 4)) + shift, alpha=0.05)
        assert result.shifted == (result.score > result.threshold) == (result.p_value <= 0.05)


def test_bad_arguments_are_refused() -> None:
    reference = fit_shift_reference(np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        shift_test(reference, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="permutations"):
        shift_test(reference, np.zeros((10, 3)), alpha=0.01, permutations=50)
    with pytest.raises(ValueError, match="non-finite"):
        shift_test(reference, np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        fit_shift_reference(np.zeros((1, 3)))


def test_a_constant_reference_dimension_still_counts() -> None:
    """A feature that never varied in the reference (one fixed question text) and moves in
    the window is a shift, not a division by zero."""
    rng = np.random.default_rng(16)
    base = rng.normal(size=(200, 3))
    base[:, 0] = 1.0
    reference = fit_shift_reference(base)
    same = rng.normal(size=(50, 3))
    same[:, 0] = 1.0
    assert not shift_test(reference, same, permutations=199).shifted
    moved = same.copy()
    moved[:, 0] = 0.5
    assert shift_test(reference, moved, permutations=199).shifted


# ---------------------------------------------------------------------------- embeddings


def test_text_embedding_is_deterministic_normalised_and_sensitive() -> None:
    a = text_embedding("What colour is the shape in the image?")
    assert a.shape == (TEXT_EMBEDDING_DIM,)
    assert np.linalg.norm(a) == pytest.approx(1.0)
    assert np.array_equal(a, text_embedding("What colour is the shape in the image?"))
    # Pinned values: the same vector in every process and on every machine (no Python hash).
    nonzero = np.nonzero(a)[0]
    assert nonzero[:6].tolist() == [5, 6, 10, 11, 12, 13]
    assert a[nonzero[:6]] == pytest.approx(
        [-0.150756, 0.301511, 0.150756, -0.150756, 0.301511, 0.301511], abs=1e-6
    )
    near = text_embedding("What colour is the shape in this image?")
    far = text_embedding("Quelle est la capitale de la France ?")
    assert float(a @ near) > float(a @ far)
    assert not text_embedding("").any()
    assert np.linalg.norm(text_embedding("é")) == pytest.approx(1.0)


def test_text_embeddings_of_a_batch_equal_each_text_embedding_exactly() -> None:
    """The writer embeds a batch of prompts at once; each row must be the one-text vector,
    bit for bit (texts shorter than a 3-gram, non-ASCII, lone surrogates, repeats)."""
    rng = random.Random(5)
    alphabet = "abc é😀\ud800 xyzAB\n"
    texts = ["", "a", "ab", "abc", "é", "😀", "ab\ud800", "abab" * 3, "What colour?"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    for size in (1, 2, 7, 40, len(texts)):
        batch = rng.sample(texts, size)
        rows = text_embeddings(batch)
        assert rows.shape == (size, TEXT_EMBEDDING_DIM) and rows.dtype == np.float64
        for text, row in zip(batch, rows, strict=True):
            assert row.tobytes() == text_embedding(text).tobytes(), text
    assert text_embeddings([]).shape == (0, TEXT_EMBEDDING_DIM)


def test_a_batch_of_request_inputs_embeds_as_each_alone() -> None:
    """`embed_all` (the writer's batch) gives every request what `embeddings()` gives it alone;
    a request shared by several choices is embedded once."""
    prompts: list[object] = [
        [{"role": "user", "content": "Which is right? A or B."}],
        [{"role": "user", "content": [{"type": "text", "text": "Name it."}]}],
        "a completion prompt",
        [1, 2, 3],  # token ids: no text
        "ab",
    ]
    batch = [RequestInputs(prompt) for prompt in prompts]
    alone = [RequestInputs(prompt).embeddings() for prompt in prompts]
    embed_all([*batch, batch[0]])
    assert [inputs.embeddings() for inputs in batch] == alone
    assert alone[3] == {} and set(alone[0]) == {"text"}


def test_text_embedding_does_not_depend_on_the_process() -> None:
    import subprocess
    import sys

    code = "from calibrators import text_embedding; print(text_embedding('abc def ghi').tolist())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert eval(out) == text_embedding("abc def ghi").tolist()


def _picture(difficulty: int, seed: int) -> np.ndarray:
    return np.asarray(draw_scene("colour", difficulty, random.Random(seed)).image)


def test_image_embedding_reads_colour_layout_and_noise() -> None:
    clean = image_embedding(_picture(0, 1))
    assert clean.shape == (IMAGE_EMBEDDING_DIM,)
    assert np.all(np.isfinite(clean))
    noisy = image_embedding(_picture(3, 1))
    noise_index = IMAGE_EMBEDDING_DIM - 1  # the Laplacian energy, last
    assert noisy[noise_index] > 3 * clean[noise_index]
    red = np.zeros((8, 8, 3), dtype=np.uint8)
    red[..., 0] = 220
    blue = np.zeros((8, 8, 3), dtype=np.uint8)
    blue[..., 2] = 220
    hue = slice(12, 24)
    assert np.argmax(image_embedding(red)[hue]) != np.argmax(image_embedding(blue)[hue])
    grey = np.full((8, 8, 3), 128, dtype=np.uint8)
    assert image_embedding(grey)[24] == 1.0  # all of it unsaturated


def test_image_embedding_refuses_non_rgb() -> None:
    with pytest.raises(ValueError):
        image_embedding(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        image_embedding(np.zeros((1, 8, 3)))


def test_clean_vs_noisy_pictures_through_the_whole_test() -> None:
    """The vision set's own pictures: difficulty 0 as reference, difficulty 0 and 3 windows."""
    reference = fit_shift_reference([image_embedding(_picture(0, s)) for s in range(300)])
    same = [image_embedding(_picture(0, s)) for s in range(1000, 1150)]
    moved = [image_embedding(_picture(3, s)) for s in range(2000, 2150)]
    assert not shift_test(reference, same, permutations=199).shifted
    assert shift_test(reference, moved, permutations=199).shifted
