"""Label-free input shift: do recent inputs still look like the ones the profile was fitted on?

Two parts, both pure numpy (no decoding, no I/O: the service turns requests into arrays):

* **Embeddings.** `text_embedding` hashes the UTF-8 byte 3-grams of a text into a fixed signed
  vector (feature hashing with a hash that is the same in every process, unlike Python's
  `hash`). `image_embedding` reduces an RGB pixel array to 30 numbers a shift of the picture
  distribution moves: the mean colour of each quadrant (layout, 12), a saturation-weighted hue
  histogram plus the grey share (which colours, 13), and brightness, contrast, edge energy and
  pixel-level noise (5). No learned encoder: nothing to download, well under a millisecond.
* **The test.** `fit_shift_reference` standardises the reference sample and fixes a random
  Fourier feature map of a Gaussian kernel (bandwidth: the median pairwise distance); the score
  of a window is the squared distance between the two mean embeddings in that feature space,
  i.e. the (biased) MMD² of the random-feature kernel. `shift_test` calibrates the threshold by
  permutation: reference and window are pooled and re-split at random `permutations` times, and
  the window is flagged when its score exceeds the permuted scores often enough that the
  permutation p-value is at most `alpha`. Under "window drawn from the reference distribution"
  the pooled sample is exchangeable, so a window is flagged with probability at most `alpha`
  whatever the sample sizes or the feature distribution.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_EMBEDDING_DIM",
    "TEXT_EMBEDDING_DIM",
    "ShiftReference",
    "ShiftResult",
    "fit_shift_reference",
    "image_embedding",
    "shift_test",
    "text_embedding",
    "text_embeddings",
]

TEXT_EMBEDDING_DIM = 64
IMAGE_EMBEDDING_DIM = 30
_HUE_BINS = 12

# Multiplicative hashing of a 3-byte window (Knuth's constant): the bucket from the high bits,
# the sign from a low bit.
_MULT = np.uint64(2654435761)
_MASK32 = np.uint64(0xFFFFFFFF)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def text_embedding(text: str, dim: int = TEXT_EMBEDDING_DIM) -> np.ndarray:
    """Signed feature hashing of the byte 3-grams of `text`, L2-normalised (zeros if empty).

    Deterministic across processes and machines (no Python `hash`), so embeddings stored by one
    replica compare with those of another.
    """
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if data.size < 3:
        single = np.zeros(dim, dtype=np.float64)
        if data.size:
            single[zlib.crc32(data.tobytes()) % dim] = 1.0
        return single
    grams = (
        data[:-2].astype(np.uint64) << np.uint64(16)
        | data[1:-1].astype(np.uint64) << np.uint64(8)
        | data[2:].astype(np.uint64)
    )
    hashed = (grams * _MULT) & _MASK32
    buckets = (hashed >> np.uint64(16)) % np.uint64(dim)
    signs = np.where((hashed >> np.uint64(7)) & np.uint64(1), 1.0, -1.0)
    out = np.bincount(buckets.astype(np.intp), weights=signs, minlength=dim)
    norm = float(np.linalg.norm(out))
    return out / norm if norm > 0 else out


def text_embeddings(texts: Sequence[str], dim: int = TEXT_EMBEDDING_DIM) -> np.ndarray:
    """`text_embedding` of each text, as the rows of one ``len(texts) × dim`` array, equal
    value for value to the one-text function, in one vectorised pass.

    Why: the gateway embeds every request's prompt (the input-shift gauge); one text at a time
    the dozen numpy calls cost ~10 µs whatever the text's length, most of the embedding's cost.
    The counts are sums of ±1 (exact in float64 in any order), so the rows are bit-identical.
    """
    out = np.zeros((len(texts), dim), dtype=np.float64)
    rows: list[int] = []
    chunks: list[bytes] = []
    for row, text in enumerate(texts):
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) >= 3:
            rows.append(row)
            chunks.append(encoded)
        elif encoded:
            out[row, zlib.crc32(encoded) % dim] = 1.0
    if not rows:
        return out
    lengths = np.fromiter(map(len, chunks), dtype=np.intp, count=len(chunks))
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    grams = (
        data[:-2].astype(np.uint64) << np.uint64(16)
        | data[1:-1].astype(np.uint64) << np.uint64(8)
        | data[2:].astype(np.uint64)
    )
    # The two grams starting in the last two bytes of a text run into the next one: dropped.
    ends = np.cumsum(lengths)
    keep = np.ones(grams.size, dtype=bool)
    keep[ends[:-1] - 2] = False
    keep[ends[:-1] - 1] = False
    grams = grams[keep]
    hashed = (grams * _MULT) & _MASK32
    buckets = ((hashed >> np.uint64(16)) % np.uint64(dim)).astype(np.intp)
    signs = np.where((hashed >> np.uint64(7)) & np.uint64(1), 1.0, -1.0)
    owner = np.repeat(np.asarray(rows, dtype=np.intp), lengths - 2)
    counts = np.bincount(owner * dim + buckets, weights=signs, minlength=len(texts) * dim)
    counts = counts.reshape(len(texts), dim)
    norms = np.sqrt(np.einsum("ij,ij->i", counts, counts))
    long_rows = np.asarray(rows, dtype=np.intp)
    scale = norms[long_rows]
    nonzero = scale > 0
    chosen = long_rows[nonzero]
    out[chosen] = counts[chosen] / scale[nonzero, None]
    zero = long_rows[~nonzero]
    out[zero] = counts[zero]
    return out


def image_embedding(pixels: Any) -> np.ndarray:
    """A fixed 30-number description of an RGB image (``H × W × 3`` uint8, any size ≥ 2×2).

    Layout (12): mean R, G, B of each quadrant. Colour (13): a 12-bin hue histogram weighted by
    saturation, and the share of grey (unsaturated) pixels. Texture (5): mean and standard
    deviation of grey, mean absolute horizontal and vertical gradient, and the mean absolute
    discrete Laplacian at full resolution (pixel noise). All in [0, 1]-ish units (pixels / 255).
    Colour and gradients are read on a 2× box-downsampled copy (a quarter of the pixels).
    """
    rgb = np.asarray(pixels)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"expected an H×W×3 RGB array of at least 2×2, got {rgb.shape}")
    x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    grey_full = x @ _LUMA
    if grey_full.shape[0] >= 3 and grey_full.shape[1] >= 3:
        centre = grey_full[1:-1, 1:-1]
        lap = 4.0 * centre - grey_full[:-2, 1:-1] - grey_full[2:, 1:-1]
        lap -= grey_full[1:-1, :-2] + grey_full[1:-1, 2:]
        noise = float(np.abs(lap).mean())
    else:
        noise = 0.0
    if x.shape[0] >= 8 and x.shape[1] >= 8:  # 2× box downsample (even crop)
        h, w = x.shape[0] // 2, x.shape[1] // 2
        x = x[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
    h, w = x.shape[0] // 2, x.shape[1] // 2
    layout = x[: 2 * h, : 2 * w].reshape(2, h, 2, w, 3).mean(axis=(1, 3)).reshape(-1)

    flat = x.reshape(-1, 3)
    high = flat.max(axis=1)
    chroma = high - flat.min(axis=1)
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    safe = np.where(chroma > 0, chroma, np.float32(1.0))
    hue = np.where(
        high == r, (g - b) / safe, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue %= 6.0  # in [0, 6)
    bins = (hue * np.float32(_HUE_BINS / 6.0)).astype(np.intp)
    np.minimum(bins, _HUE_BINS - 1, out=bins)
    hue_hist = np.bincount(bins, weights=chroma, minlength=_HUE_BINS) / flat.shape[0]
    grey_share = float(np.count_nonzero(chroma < 0.1)) / flat.shape[0]

    grey = x @ _LUMA
    dx = float(np.abs(np.diff(grey, axis=1)).mean())
    dy = float(np.abs(np.diff(grey, axis=0)).mean())
    texture = [float(grey_full.mean()), float(grey_full.std()), dx, dy, noise]
    out = np.empty(IMAGE_EMBEDDING_DIM)
    out[:12] = layout
    out[12:24] = hue_hist
    out[24] = grey_share
    out[25:] = texture
    return out


@dataclass(frozen=True)
class ShiftReference:
    """A reference sample made ready for `shift_test`: its standardisation, a fixed random
    Fourier feature map, and the reference's features under that map."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    omega: np.ndarray  # (d, D) frequencies
    phase: np.ndarray  # (D,)
    features: np.ndarray  # (n, D): the reference sample's random features
    bandwidth: float

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def embed(self, sample: Any) -> np.ndarray:
        """Random Fourier features of `sample` (n × d) under this reference's map."""
        x = _matrix(sample, "sample")
        if x.shape[1] != self.dim:
            raise ValueError(f"sample has {x.shape[1]} dimensions, the reference {self.dim}")
        z = (x - self.mean) / self.scale
        d = self.omega.shape[1]
        features: np.ndarray = math.sqrt(2.0 / d) * np.cos(z @ self.omega + self.phase)
        return features


@dataclass(frozen=True)
class ShiftResult:
    """One test of a window against a reference.

    `score`: the window's MMD² estimate; `threshold`: the permutation threshold at `alpha`
    (`shifted` ⟺ ``score > threshold``); `p_value`: the permutation p-value.
    """

    score: float
    threshold: float
    shifted: bool
    p_value: float
    n_reference: int
    n_window: int


def _matrix(sample: Any, name: str) -> np.ndarray:
    array = np.asarray(sample, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty n × d array")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    return array


def fit_shift_reference(
    sample: Any, *, n_features: int = 128, seed: int = 0, min_scale: float = 1e-2
) -> ShiftReference:
    """Prepare `sample` (n × d, n ≥ 2) as the reference of later `shift_test` calls.

    Each dimension is standardised by the reference's mean and standard deviation (floored at
    `min_scale`, so a dimension constant in the reference does not divide by zero yet still
    counts when the window moves it); the Gaussian kernel's bandwidth is the median pairwise
    distance of the standardised reference (the usual heuristic, on at most 500 points).
    """
    x = _matrix(sample, "reference")
    if x.shape[0] < 2:
        raise ValueError("the reference needs at least 2 rows")
    if n_features < 1:
        raise ValueError("n_features must be >= 1")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), min_scale)
    z = (x - mean) / scale
    probe = z if z.shape[0] <= 500 else z[rng.choice(z.shape[0], 500, replace=False)]
    sq = np.sum(probe**2, axis=1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * probe @ probe.T, 0.0)
    upper = dist2[np.triu_indices(probe.shape[0], k=1)]
    positive = upper[upper > 0]
    bandwidth = float(np.sqrt(np.median(positive))) if positive.size else 1.0
    omega = rng.normal(0.0, 1.0 / bandwidth, size=(x.shape[1], n_features))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=n_features)
    features = math.sqrt(2.0 / n_features) * np.cos(z @ omega + phase)
    return ShiftReference(mean, scale, omega, phase, features, bandwidth)


def shift_test(
    reference: ShiftReference,
    window: Any,
    *,
    alpha: float = 0.01,
    permutations: int = 499,
    seed: int = 0,
) -> ShiftResult:
    """Test whether `window` (m × d) comes from the reference's distribution.

    The window is flagged when ``(1 + #{permuted score ≥ score}) / (permutations + 1) ≤ alpha``;
    equivalently when its score exceeds the reported threshold, the ``k``-th largest permuted
    score with ``k = floor(alpha (permutations + 1))``. Needs ``permutations ≥ 1/alpha - 1``
    (else nothing could ever be flagged).
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    k = math.floor(alpha * (permutations + 1) + 1e-9)
    if k < 1:
        raise ValueError(f"permutations must be at least {math.ceil(1 / alpha) - 1} for {alpha=}")
    phi_w = reference.embed(window)
    phi_r = reference.features
    n, m = phi_r.shape[0], phi_w.shape[0]
    pooled = np.concatenate([phi_r, phi_w])
    total = pooled.sum(axis=0)
    score = _mmd2(phi_r.sum(axis=0), phi_w.sum(axis=0), n, m)

    rng = np.random.default_rng(seed)
    permuted = np.empty(permutations)
    small = min(n, m)  # draw the smaller group; the other one's sums are the rest
    chunk = max(1, 2_000_000 // max(1, small * pooled.shape[1]))  # ~16 MB of gathered rows
    for start in range(0, permutations, chunk):
        count = min(chunk, permutations - start)
        picks = np.argpartition(rng.random((count, n + m)), small - 1, axis=1)[:, :small]
        drawn = pooled[picks].sum(axis=1)
        window_sums = drawn if small == m else total - drawn
        permuted[start : start + count] = _mmd2(total - window_sums, window_sums, n, m)
    threshold = float(np.sort(permuted)[::-1][k - 1])
    p_value = (1.0 + float(np.sum(permuted >= score))) / (permutations + 1.0)
    return ShiftResult(
        score=float(score),
        threshold=threshold,
        shifted=bool(score > threshold),  # the same as p_value <= alpha
        p_value=p_value,
        n_reference=int(n),
        n_window=int(m),
    )


def _mmd2(ref_sums: Any, win_sums: Any, n: int, m: int) -> Any:
    """Squared distance of the mean embeddings (rows or a single vector of sums)."""
    gap = np.asarray(ref_sums) / n - np.asarray(win_sums) / m
    return np.sum(gap * gap, axis=-1)
