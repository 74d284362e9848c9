"""Random Forest bootstrap stage: fit on a few labelled slices or scribbles, predict lazily.

The paper's first stage (docs/architecture.md §1): a Random Forest on pixel features
(:mod:`activeseg.features`) turns scribbles or a few fully labelled slices into a
pre-segmentation of any slice, and its uncertainty seeds the first query before any
network exists.

- :func:`fit_rf` reads only the labelled slices (labels are a ``(Z, Y, X)`` uint8
  array or memmap with 255 = unlabelled, or a dict ``{z: (Y, X) mask}``), computes
  their features block by block, draws a stratified pixel sample of at most
  ``max_pixels`` and fits a scikit-learn :class:`~sklearn.ensemble.RandomForestClassifier`.
- :class:`RFModel` predicts float32 ``(n, C, Y, X)`` probabilities for any slices
  (only their features are computed), draws per-tree-group samples for BALD, streams a
  whole stack to a memmap, and reduces entropy / margin / porosity to per-slice scores.
- Persistence without pickle: :func:`save_rf` writes the fitted trees' arrays and the
  model's :meth:`RFModel.spec` (features, forest hyperparameters, seed, geometry) to an
  ``.npz``, and :func:`load_rf` rebuilds a model with bit-identical probabilities (same
  scikit-learn release; a digest and bounds checks refuse a damaged file). :func:`refit_rf`
  rebuilds the same forest from the stored labels and that spec instead.

Defaults (8 trees, depth 10, at least 5 samples per leaf, half the training pixels per
tree, class weights "auto", the default :class:`~activeseg.features.FeatureConfig`) were chosen with
``benchmarks/bench_rf.py`` (see BENCHMARKS.md, "RF bootstrap").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from activeseg.errors import ConfigError, LabelError, ModelError
from activeseg.features import (
    FeatureConfig,
    feature_names,
    iter_feature_blocks,
    resolve_geometry,
)
from activeseg.geometry import Geometry
from activeseg.prefetch import prefetch
from activeseg.safety import atomic_save_npz, release_pages
from activeseg.uncertainty import entropy, margin, reduce_slices
from activeseg.validation import check_slices, check_stack

__all__ = [
    "UNLABELLED",
    "MAX_PIXELS",
    "MAX_CLASSES",
    "RFParams",
    "RFModel",
    "fit_rf",
    "refit_rf",
    "save_rf",
    "load_rf",
    "labelled_slices",
]

log = logging.getLogger(__name__)

UNLABELLED = 255
"""Label value of unlabelled pixels (in-memory convention, docs/architecture.md §3)."""

MAX_PIXELS = 100_000
"""Default cap on training pixels (stratified sample over labelled slices and classes)."""

MAX_CLASSES = 32
"""Largest number of classes accepted (label values 0..31)."""

N_ESTIMATORS = 8
MAX_DEPTH = 10
MIN_SAMPLES_LEAF = 5
MAX_SAMPLES = 0.5
# Forest defaults chosen with benchmarks/bench_rf.py: with the z-context / parallax
# features, more or deeper trees add little accuracy but cost prediction time.

SPEC_KIND = "activeseg.rf"
SPEC_VERSION = 1

_LABEL_SCAN_BLOCK = 16


@dataclass(frozen=True)
class RFParams:
    """Forest hyperparameters and the training-pixel cap (JSON-able, stored in the spec).

    Parameters
    ----------
    n_estimators, max_depth, min_samples_leaf, max_features, max_samples : passed to
        :class:`sklearn.ensemble.RandomForestClassifier` (``max_depth=None`` = unlimited;
        ``max_samples`` = fraction of the training pixels drawn for each tree).
    class_weight : "auto" (default), "balanced", "balanced_subsample" or None. "auto"
        is None (keep the labelled class frequencies as the prior: right for fully
        labelled slices, and measured better in accuracy and solid IoU) when at least
        half the pixels of the labelled slices are labelled, and "balanced" for sparse
        scribbles (whose class frequencies say nothing about the material).
    max_pixels : at most this many training pixels, drawn at random within each
        (slice, class) stratum in proportion to its size; all pixels when fewer are
        labelled.
    n_classes : number of classes ``C``; None = largest label value + 1.
    """

    n_estimators: int = N_ESTIMATORS
    max_depth: int | None = MAX_DEPTH
    min_samples_leaf: int = MIN_SAMPLES_LEAF
    max_features: str | float | int = "sqrt"
    max_samples: float | None = MAX_SAMPLES
    class_weight: str | None = "auto"
    max_pixels: int = MAX_PIXELS
    n_classes: int | None = None

    def __post_init__(self) -> None:
        if int(self.n_estimators) < 1:
            raise ConfigError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth is not None and int(self.max_depth) < 1:
            raise ConfigError(f"max_depth must be >= 1 or None (unlimited), got {self.max_depth}")
        if int(self.min_samples_leaf) < 1:
            raise ConfigError(f"min_samples_leaf must be >= 1, got {self.min_samples_leaf}")
        if self.class_weight not in ("auto", "balanced", "balanced_subsample", None):
            raise ConfigError(
                f"class_weight must be 'auto', 'balanced', 'balanced_subsample' or None, got {self.class_weight!r}"
            )
        if self.max_samples is not None and not 0.0 < float(self.max_samples) <= 1.0:
            raise ConfigError(f"max_samples must be a fraction in (0, 1] or None (all), got {self.max_samples}")
        if int(self.max_pixels) < 2:
            raise ConfigError(f"max_pixels must be >= 2, got {self.max_pixels}")
        if self.n_classes is not None and not 2 <= int(self.n_classes) <= MAX_CLASSES:
            raise ConfigError(f"n_classes must be in 2..{MAX_CLASSES} or None (inferred), got {self.n_classes}")


# --- labels -------------------------------------------------------------------------------


def _check_label_array(labels, image_shape: tuple[int, int, int]):
    shape = tuple(int(s) for s in getattr(labels, "shape", ()))
    if shape != tuple(image_shape):
        hint = ""
        if len(shape) == 2 and shape == tuple(image_shape[1:]):
            hint = "; for a single labelled slice pass a dict {z: mask}"
        raise LabelError(f"labels shape {shape} does not match image shape {tuple(image_shape)}{hint}")
    dtype = np.dtype(getattr(labels, "dtype", np.uint8))
    if dtype.kind not in "ui":
        raise LabelError(
            f"labels must be an integer array (uint8: 0 solid, 1 pore, 255 unlabelled), got dtype {dtype}; "
            "convert with labels.astype(np.uint8)"
        )


def labelled_slices(labels, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Global ids of slices holding at least one labelled pixel (value != 255).

    ``labels`` is a ``(Z, Y, X)`` integer array-like (memmaps and lazy stacks are read
    ``16`` slices at a time, never all at once) or a dict ``{z: (Y, X) mask}``.
    """
    if isinstance(labels, Mapping):
        return np.array(sorted(int(z) for z, m in labels.items() if np.any(np.asarray(m) != UNLABELLED)), dtype=np.int64)
    if image_shape is not None:
        _check_label_array(labels, image_shape)
    z = int(labels.shape[0])
    found: list[int] = []
    for z0 in range(0, z, _LABEL_SCAN_BLOCK):
        blk = np.asarray(labels[z0 : z0 + _LABEL_SCAN_BLOCK])
        hit = np.flatnonzero((blk != UNLABELLED).any(axis=(1, 2)))
        found.extend(int(z0 + h) for h in hit)
    return np.array(found, dtype=np.int64)


def _label_slices(labels, image_shape) -> dict[int, np.ndarray]:
    """Validated ``{z: (Y, X) int array}`` of the labelled slices."""
    zdim, y, x = image_shape
    if isinstance(labels, Mapping):
        out = {}
        for z, m in labels.items():
            if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
                raise LabelError(f"label dict keys must be integer slice ids, got {z!r}")
            if not 0 <= int(z) < zdim:
                raise LabelError(f"labelled slice {z} is outside the stack (0..{zdim - 1})")
            m = np.asarray(m)
            if m.shape != (y, x):
                raise LabelError(f"mask of slice {z} has shape {m.shape}, expected the slice shape {(y, x)}")
            if m.dtype.kind not in "ui":
                raise LabelError(f"mask of slice {z} must be integer (uint8), got dtype {m.dtype}")
            if np.any(m != UNLABELLED):
                out[int(z)] = m
        return dict(sorted(out.items()))
    _check_label_array(labels, image_shape)
    return {int(z): np.asarray(labels[int(z)]) for z in labelled_slices(labels)}


def _check_values(masks: dict[int, np.ndarray], n_classes: int | None) -> tuple[int, np.ndarray]:
    """Check label values; returns (n_classes, per-class pixel counts)."""
    limit = MAX_CLASSES if n_classes is None else int(n_classes)
    counts = np.zeros(MAX_CLASSES, dtype=np.int64)
    for z, m in masks.items():
        vals = m[m != UNLABELLED]
        if vals.size and (vals.min() < 0 or vals.max() >= limit):
            bad = vals[(vals < 0) | (vals >= limit)][0]
            what = f"n_classes={n_classes}" if n_classes is not None else f"at most {MAX_CLASSES} classes"
            raise LabelError(
                f"slice {z} holds label value {int(bad)}, out of range for {what}; expected 0..{limit - 1} "
                "(0 = solid, 1 = pore) and 255 = unlabelled. A 0/255 mask or an ilastik scribble file "
                "(0 = unlabelled, class c stored as c + 1) must be converted first "
                "(activeseg.scribbles.ilastik_to_labels)"
            )
        counts += np.bincount(vals.astype(np.int64), minlength=MAX_CLASSES)[:MAX_CLASSES]
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise LabelError("labels hold no labelled pixel (everything is 255 = unlabelled); label at least two classes")
    if present.size < 2:
        raise LabelError(
            f"labels hold only class {int(present[0])} ({int(counts[present[0]])} pixels); the Random Forest needs "
            "at least two classes: add scribbles or a slice with both solid (0) and pore (1)"
        )
    c = int(present.max()) + 1 if n_classes is None else int(n_classes)
    return max(c, 2), counts[:max(c, 2)]


def _allocate(sizes: np.ndarray, cap: int) -> np.ndarray:
    """Split ``cap`` over strata proportionally to ``sizes`` (largest remainder); exact sum."""
    total = int(sizes.sum())
    if total <= cap:
        return sizes.copy()
    exact = sizes * (cap / total)
    q = np.floor(exact).astype(np.int64)
    rest = cap - int(q.sum())
    if rest > 0:
        order = np.argsort(-(exact - q), kind="stable")
        q[order[:rest]] += 1
    return np.minimum(q, sizes)


# --- fitting ------------------------------------------------------------------------------



def _forest(params, class_weight, n_jobs: int, seed: int):
    """The scikit-learn forest of ``params`` (fitted by :func:`fit_rf`, filled by :func:`load_rf`)."""
    from sklearn.ensemble import RandomForestClassifier  # heavy (about 2 s): only where a forest is made

    return RandomForestClassifier(n_estimators=params.n_estimators, max_depth=params.max_depth,
                                  min_samples_leaf=params.min_samples_leaf, max_features=params.max_features,
                                  max_samples=params.max_samples, class_weight=class_weight, n_jobs=n_jobs,
                                  random_state=seed)

def fit_rf(
    image,
    labels,
    *,
    rng: np.random.Generator,
    geometry: Geometry | None = None,
    features: FeatureConfig = FeatureConfig(),
    n_estimators: int = N_ESTIMATORS,
    max_depth: int | None = MAX_DEPTH,
    min_samples_leaf: int = MIN_SAMPLES_LEAF,
    max_features: str | float | int = "sqrt",
    max_samples: float | None = MAX_SAMPLES,
    class_weight: str | None = "auto",
    max_pixels: int = MAX_PIXELS,
    n_classes: int | None = None,
    n_jobs: int = -1,
) -> RFModel:
    """Fit a Random Forest on the labelled pixels of a stack.

    Parameters
    ----------
    image : (Z, Y, X) array-like (numpy, memmap or :func:`activeseg.io.open_stack`).
    labels : (Z, Y, X) integer array-like, 0 = solid, 1 = pore (more classes allowed),
        255 = unlabelled; or a dict ``{z: (Y, X) mask}`` in the same convention. Only
        slices with labelled pixels are read in full, and only their features computed.
    rng : the one source of randomness: a single int seed is drawn from it here, and
        that seed alone drives the pixel sample and the forest (stored in
        :meth:`RFModel.spec`, so :func:`refit_rf` reproduces the model).
    geometry : voxel size, beam angle and sign; a missing sign is estimated from the
        stack when the features need it (the model keeps the resolved geometry).
    features : the pixel features.
    n_estimators, max_depth, min_samples_leaf, max_features, max_samples, class_weight :
        forest hyperparameters (see :class:`RFParams`).
    max_pixels : training-pixel cap: a stratified sample (strata = labelled slice x
        class, each sampled in proportion to its size, without replacement) of at most
        this many pixels; class imbalance is then handled by ``class_weight`` ("auto":
        None for (mostly) fully labelled slices, "balanced" for scribbles).
    n_classes : C; default the largest label value + 1.
    n_jobs : threads for fitting and prediction (-1 = all cores).

    Returns
    -------
    RFModel

    Raises
    ------
    LabelError : labels of the wrong shape or dtype, values out of range, nothing
        labelled, or a single class present.
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    params = RFParams(
        n_estimators=int(n_estimators),
        max_depth=None if max_depth is None else int(max_depth),
        min_samples_leaf=int(min_samples_leaf),
        max_features=max_features,
        max_samples=max_samples,
        class_weight=class_weight,
        max_pixels=int(max_pixels),
        n_classes=n_classes,
    )
    seed = int(rng.integers(0, 2**31 - 1))
    return _fit(image, labels, params=params, features=features, geometry=geometry, seed=seed, n_jobs=n_jobs)


def _fit(image, labels, *, params: RFParams, features: FeatureConfig, geometry, seed: int, n_jobs: int) -> RFModel:
    shape = check_stack(image)
    masks = _label_slices(labels, shape)
    n_classes, class_counts = _check_values(masks, params.n_classes)
    params = replace(params, n_classes=n_classes)
    geometry = resolve_geometry(image, geometry, features)
    sub_rng = np.random.default_rng(seed)

    # stratified sample: strata = (slice, class), proportional allocation, exact cap
    zs = list(masks)
    sizes = np.array([[np.count_nonzero(masks[z] == c) for c in range(n_classes)] for z in zs], dtype=np.int64)
    quota = _allocate(sizes.ravel(), params.max_pixels).reshape(sizes.shape)
    picks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, z in enumerate(zs):
        flat = masks[z].ravel()
        idx, cls = [], []
        for c in range(n_classes):
            if quota[i, c] == 0:
                continue
            where = np.flatnonzero(flat == c)
            if quota[i, c] < where.size:
                where = np.sort(sub_rng.choice(where, size=int(quota[i, c]), replace=False))
            idx.append(where)
            cls.append(np.full(where.size, c, dtype=np.uint8))
        if idx:
            picks[z] = (np.concatenate(idx), np.concatenate(cls))
    n_total = sum(p[0].size for p in picks.values())
    class_weight = params.class_weight
    if class_weight == "auto":
        labelled_fraction = float(sizes.sum()) / (len(zs) * shape[1] * shape[2])
        class_weight = None if labelled_fraction >= 0.5 else "balanced"
    n_feat = features.n_features
    x_train = np.empty((n_total, n_feat), dtype=np.float32)
    y_train = np.empty(n_total, dtype=np.uint8)
    row = 0
    for ids, feats in iter_feature_blocks(image, list(picks), config=features, geometry=geometry, block=1, buffers=1):
        for z, f in zip(ids, feats):
            pix, pix_cls = picks[int(z)]
            x_train[row : row + pix.size] = f.reshape(n_feat, -1)[:, pix].T
            y_train[row : row + pix.size] = pix_cls
            row += pix.size
    forest = _forest(params, class_weight, n_jobs, seed)
    forest.fit(x_train, y_train)
    forest.n_jobs = n_jobs
    log.info(
        "fitted RF: %d trees on %d pixels from %d slices (%d features, classes %s)",
        params.n_estimators, n_total, len(zs), n_feat, forest.classes_.tolist(),
    )
    training = {
        "slices": [int(z) for z in zs],
        "n_pixels": int(n_total),
        "class_counts": [int(v) for v in class_counts],
        "class_weight": class_weight,
    }
    return RFModel(
        forest=forest,
        n_classes=n_classes,
        features=features,
        geometry=geometry,
        params=params,
        seed=seed,
        training=training,
        n_jobs=n_jobs,
    )


def refit_rf(image, labels, spec: Mapping, *, n_jobs: int = -1) -> RFModel:
    """Rebuild a model from its :meth:`RFModel.spec` and the same labels (no pickle).

    Deterministic: the stored seed drives the pixel sample and the forest, so the
    refitted model predicts exactly what the original did (given the same image and
    labels).
    """
    if not isinstance(spec, Mapping) or spec.get("kind") != SPEC_KIND:
        raise ModelError(f"not an RF spec (expected a dict with kind={SPEC_KIND!r}), got {type(spec).__name__}")
    if int(spec.get("version", -1)) > SPEC_VERSION:
        raise ModelError(f"RF spec version {spec.get('version')} is newer than this activeseg supports ({SPEC_VERSION})")
    try:
        params = RFParams(**spec["forest"])
        features = FeatureConfig.from_dict(spec["features"])
        geometry = Geometry.from_dict(spec["geometry"])
        seed = int(spec["seed"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"RF spec is incomplete or malformed: {exc}") from None
    return _fit(image, labels, params=params, features=features, geometry=geometry, seed=seed, n_jobs=n_jobs)

# --- the fitted forest on disk (no pickle) --------------------------------------------


RF_FILE_KIND = "activeseg.rf-trees"
RF_FILE_VERSION = 1
"""Layout of the files :func:`save_rf` writes; :func:`load_rf` refuses a newer one."""

_TREE_ARRAYS = ("nodes", "values", "node_count", "max_depth", "tree_seed", "forest_classes", "tree_classes")


def _sklearn_release() -> str:
    import sklearn  # heavy: only when a forest is stored or loaded

    return ".".join(sklearn.__version__.split(".")[:2])


def _packed(dtype: np.dtype) -> np.dtype:
    """A structured dtype without padding (what ``.npy`` files keep of scikit-learn's node layout)."""
    fields = dtype.fields
    assert dtype.names is not None and fields is not None  # a structured dtype (scikit-learn's tree nodes)
    return np.dtype([(name, fields[name][0]) for name in dtype.names])


def _repack(nodes: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``nodes`` copied field by field into the structured ``dtype``."""
    out = np.zeros(nodes.shape, dtype=dtype)
    for name in dtype.names or ():
        out[name] = nodes[name]
    return out


def _rf_digest(meta_text: str, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the metadata and of every tree array (name, dtype, shape and bytes)."""
    h = hashlib.sha256(meta_text.encode())
    for name in _TREE_ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.dtype.descr}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def rf_arrays(rf: RFModel, *, key: str | None = None) -> dict[str, np.ndarray]:
    """The arrays :func:`save_rf` writes: every tree's nodes and values, and the metadata.

    ``nodes`` (structured, no Python objects) and ``values`` (float64 ``(N, 1, K)``) are
    the trees' ``tree_.__getstate__()`` arrays one after another (``node_count`` (T,)
    says where each tree starts); ``meta`` is JSON text (the model's :meth:`RFModel.spec`,
    the scikit-learn release, the number of features and ``key``); ``digest`` is the
    SHA-256 of all of it, checked by :func:`load_rf`.
    """
    forest = rf.forest
    trees = list(forest.estimators_)
    if not trees:
        raise ModelError("the Random Forest has no trees; fit it (fit_rf) before saving it")
    states = [t.tree_.__getstate__() for t in trees]
    first = trees[0]
    for t in trees[1:]:
        if not np.array_equal(t.classes_, first.classes_):
            raise ModelError("the forest's trees disagree on their classes; it cannot be stored as one set of arrays")
    arrays = {
        "nodes": np.concatenate([_repack(s["nodes"], _packed(s["nodes"].dtype)) for s in states]),
        "values": np.concatenate([s["values"] for s in states]).astype(np.float64, copy=False),
        "node_count": np.array([s["node_count"] for s in states], dtype=np.int64),
        "max_depth": np.array([s["max_depth"] for s in states], dtype=np.int64),
        "tree_seed": np.array([int(t.random_state) for t in trees], dtype=np.int64),
        "forest_classes": np.asarray(forest.classes_),
        "tree_classes": np.asarray(first.classes_),
    }
    meta = {
        "kind": RF_FILE_KIND,
        "version": RF_FILE_VERSION,
        "sklearn": _sklearn_release(),
        "key": key,
        "n_features": int(forest.n_features_in_),
        "max_features_": int(first.max_features_),
        "class_weight": rf.training.get("class_weight"),
        "spec": rf.spec(),
    }
    meta_text = json.dumps(meta, sort_keys=True)
    return {**arrays, "meta": np.array(meta_text), "digest": np.array(_rf_digest(meta_text, arrays))}


def save_rf(rf: RFModel, path, *, key: str | None = None) -> Path:
    """Write a fitted :class:`RFModel` to an ``.npz`` atomically, without pickle.

    Parameters
    ----------
    rf : the fitted model.
    path : the ``.npz`` file to write (replaced atomically when it exists).
    key : an optional text stored with the model; :func:`load_rf` can require it (a
        session stores the hash of what the forest was fitted from).

    Returns
    -------
    The path written. :func:`load_rf` rebuilds a model whose probabilities are
    bit-identical to ``rf``'s (with the same scikit-learn release).
    """
    return atomic_save_npz(path, **rf_arrays(rf, key=key))


def _bad_rf(path, what: str) -> ModelError:
    return ModelError(f"stored Random Forest {path} {what}; the forest must be fitted again from its labels (fit_rf)")


def _check_tree(i: int, nodes: np.ndarray, values: np.ndarray, max_depth: int, n_features: int, k: int, path) -> None:
    """Refuse tree arrays scikit-learn would read out of bounds (a damaged or forged file)."""
    n = nodes.shape[0]
    left, right, feat = nodes["left_child"], nodes["right_child"], nodes["feature"]
    leaf = left == -1
    idx = np.arange(n)
    ok = (
        n >= 1
        and values.shape == (n, 1, k)
        and bool(np.all((right == -1) == leaf))
        and bool(np.all((left[~leaf] > idx[~leaf]) & (left[~leaf] < n)))
        and bool(np.all((right[~leaf] > idx[~leaf]) & (right[~leaf] < n)))
        and bool(np.all((feat[~leaf] >= 0) & (feat[~leaf] < n_features)))
        and bool(np.all(np.isfinite(values)))
        and 0 <= max_depth < n
    )
    if not ok:
        raise _bad_rf(path, f"holds a malformed tree {i} (child, feature or value arrays out of range)")


def load_rf(path, *, key: str | None = None, n_jobs: int = -1) -> RFModel:
    """Read a model written by :func:`save_rf` (``allow_pickle=False``).

    Parameters
    ----------
    path : the ``.npz`` file.
    key : when given, the key stored with the model must equal it.
    n_jobs : threads for prediction (-1 = all cores).

    Raises
    ------
    ModelError : the file is missing, truncated or not an ``.npz``; its contents do not
        match their digest (changed after writing); it was written by a newer activeseg,
        by another scikit-learn release, or for another key; or a tree is malformed.
    """
    from sklearn.tree import DecisionTreeClassifier  # heavy: only when a forest is loaded
    from sklearn.tree._tree import Tree

    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise _bad_rf(path, "is missing") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise _bad_rf(path, f"cannot be read (truncated or not an .npz written by activeseg: {exc})") from None
    missing = [n for n in (*_TREE_ARRAYS, "meta", "digest") if n not in stored]
    if missing:
        raise _bad_rf(path, f"lacks the arrays {missing} (not a Random Forest written by activeseg)")
    try:
        meta_text = str(stored["meta"][()])
        meta = json.loads(meta_text)
    except (ValueError, TypeError, IndexError) as exc:
        raise _bad_rf(path, f"has unreadable metadata ({exc})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind != RF_FILE_KIND:
        raise _bad_rf(path, f"is not a Random Forest written by activeseg (kind {kind!r}, expected {RF_FILE_KIND!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > RF_FILE_VERSION:
        raise _bad_rf(path, f"was written by a newer activeseg (file version {version}; this one reads up to {RF_FILE_VERSION})")
    if str(stored["digest"][()]) != _rf_digest(meta_text, stored):
        raise _bad_rf(path, "does not match its digest (changed or damaged after it was written)")
    if meta.get("sklearn") != _sklearn_release():
        raise _bad_rf(path, f"was written with scikit-learn {meta.get('sklearn')}, and this is {_sklearn_release()}")
    if key is not None and meta.get("key") != key:
        raise _bad_rf(path, f"was fitted for key {meta.get('key')!r}, not {key!r} (other labels or settings)")
    try:
        spec = meta["spec"]
        params = RFParams(**spec["forest"])
        features = FeatureConfig.from_dict(spec["features"])
        geometry = Geometry.from_dict(spec["geometry"])
        seed, n_classes, training = int(spec["seed"]), int(spec["n_classes"]), dict(spec["training"])
        n_features, max_features_ = int(meta["n_features"]), int(meta["max_features_"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise _bad_rf(path, f"has incomplete metadata ({exc})") from None
    if n_features != features.n_features:
        raise _bad_rf(path, f"was fitted on {n_features} features, but its feature settings give {features.n_features}")
    counts, depths = stored["node_count"], stored["max_depth"]
    nodes, values, tree_classes = stored["nodes"], stored["values"], stored["tree_classes"]
    k = int(tree_classes.size)
    node_dtype = Tree(n_features, np.array([k], dtype=np.intp), 1).__getstate__()["nodes"].dtype
    if nodes.dtype != _packed(node_dtype):
        raise _bad_rf(path, "holds tree nodes in a layout this scikit-learn does not use")
    nodes = _repack(nodes, node_dtype)
    if (counts.ndim != 1 or counts.size != params.n_estimators or depths.shape != counts.shape
            or stored["tree_seed"].shape != counts.shape or np.any(counts < 1)
            or int(counts.sum()) != nodes.shape[0] or values.shape[0] != nodes.shape[0]):
        raise _bad_rf(path, "holds tree arrays whose sizes disagree")
    forest = _forest(params, meta.get("class_weight"), n_jobs, seed)
    forest.estimator_ = DecisionTreeClassifier()
    forest.n_features_in_ = n_features
    forest.n_outputs_ = 1
    forest.classes_ = stored["forest_classes"]
    forest.n_classes_ = int(forest.classes_.size)
    estimators = []
    start = 0
    for i, (n, depth) in enumerate(zip(counts.tolist(), depths.tolist())):
        tree_nodes, tree_values = nodes[start : start + n], values[start : start + n]
        start += n
        _check_tree(i, tree_nodes, tree_values, int(depth), n_features, k, path)
        tree = Tree(n_features, np.array([k], dtype=np.intp), 1)
        tree.__setstate__({"max_depth": int(depth), "node_count": int(n), "nodes": tree_nodes.copy(),
                           "values": np.ascontiguousarray(tree_values)})
        est = DecisionTreeClassifier(**{p: getattr(forest, p) for p in forest.estimator_params})
        est.random_state = int(stored["tree_seed"][i])
        est.n_features_in_ = n_features
        est.n_outputs_ = 1
        est.classes_ = tree_classes
        est.n_classes_ = np.intp(k)
        est.max_features_ = max_features_
        est.tree_ = tree
        estimators.append(est)
    forest.estimators_ = estimators
    return RFModel(forest=forest, n_classes=n_classes, features=features, geometry=geometry, params=params, seed=seed,
                   training=training, n_jobs=n_jobs)


# --- the model ----------------------------------------------------------------------------


TREE_CHUNKS = 16
"""The trees' probabilities are summed in this many fixed chunks (fewer with fewer trees):
the order of the sums, hence every bit of the result, does not depend on the threads."""


def _n_workers(n_jobs: int, n_tasks: int) -> int:
    # joblib's semantics (-1 = all cores, -2 = all but one), resolved here: joblib itself
    # answers 1 inside a daemon process such as a Dask worker, where these threads are fine
    n = int(n_jobs)
    cores = os.cpu_count() or 1
    n = cores + 1 + n if n < 0 else n
    return max(1, min(n, n_tasks))


class RFModel:
    """A fitted Random Forest over pixel features (satisfies ``ProbabilityModel`` and
    ``EnsembleModel`` of :mod:`activeseg.uncertainty`).

    Attributes
    ----------
    n_classes : C.
    features : the FeatureConfig used.
    geometry : the resolved Geometry (beam sign set when parallax features are used).
    params : RFParams.
    seed : the int seed drawn at fit time.
    training : {"slices": labelled slice ids, "n_pixels": training pixels,
        "class_counts": labelled pixels per class}.
    forest : the scikit-learn RandomForestClassifier.
    """

    def __init__(
        self,
        *,
        forest,
        n_classes: int,
        features: FeatureConfig,
        geometry: Geometry,
        params: RFParams,
        seed: int,
        training: dict,
        n_jobs: int = -1,
    ) -> None:
        self.forest = forest
        self.n_classes = int(n_classes)
        self.features = features
        self.geometry = geometry
        self.params = params
        self.seed = int(seed)
        self.training = training
        self.n_jobs = n_jobs
        self.feature_names = feature_names(features)
        self._classes = np.asarray(forest.classes_, dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"RFModel(n_classes={self.n_classes}, trees={self.params.n_estimators}, "
            f"depth={self.params.max_depth}, features={len(self.feature_names)}, "
            f"trained on {len(self.training['slices'])} slices / {self.training['n_pixels']} pixels)"
        )

    # -- core ------------------------------------------------------------------------
    def _group_proba(self, feats: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
        """Mean tree probabilities per group of trees: float32 (T, b, C, Y, X)."""
        b, n_feat, y, x = feats.shape
        n_pix = b * y * x
        # (b, F, Y, X) -> (N, F) view without copying when b == 1 (Fortran order)
        if b == 1:
            xm = feats[0].reshape(n_feat, -1).T
        else:
            xm = np.ascontiguousarray(feats.transpose(0, 2, 3, 1)).reshape(n_pix, n_feat)
        trees = self.forest.estimators_
        owner = np.empty(len(trees), dtype=np.int64)
        for g, members in enumerate(groups):
            owner[members] = g
        n_groups = len(groups)
        k = self._classes.size
        # The trees are summed in fixed chunks, and the chunks' sums added in chunk order, so the
        # probabilities are bit-identical whatever the number of threads (in one process or
        # spread over the workers of a cluster); `workers` chunks are in memory at a time.
        chunks = np.array_split(np.arange(len(trees)), min(TREE_CHUNKS, len(trees)))
        workers = _n_workers(self.n_jobs, len(chunks))

        def run(chunk: np.ndarray) -> np.ndarray:
            part = np.zeros((n_groups, n_pix, k), dtype=np.float32)
            for t in chunk:
                part[owner[t]] += trees[t].predict_proba(xm, check_input=False)
            return part

        acc = run(chunks[0])
        if workers == 1:
            for chunk in chunks[1:]:
                acc += run(chunk)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for i in range(1, len(chunks), workers):
                    for part in pool.map(run, chunks[i : i + workers]):
                        acc += part
        sizes = np.array([len(g) for g in groups], dtype=np.float32)
        acc /= sizes[:, None, None]
        out = np.zeros((n_groups, b, self.n_classes, y, x), dtype=np.float32)
        acc = acc.reshape(n_groups, b, y, x, k)
        for j, c in enumerate(self._classes):
            out[:, :, c] = acc[..., j]
        return out

    def _features(self, image, slices, block: int):
        """Feature blocks of sorted unique ``slices``, computed one block ahead in a thread."""
        blocks = iter_feature_blocks(image, slices, config=self.features, geometry=self.geometry, block=block, buffers=2)
        return prefetch(blocks, depth=1, name="activeseg-features")  # 2 buffers: the one in use + the next

    def _stream(self, image, slices, block: int):
        """Yield (z, probs float32 (C, Y, X)) for sorted unique ``slices``."""
        all_trees = [np.arange(len(self.forest.estimators_))]
        for ids, feats in self._features(image, slices, block):
            for i, z in enumerate(ids):
                yield int(z), self._group_proba(feats[i : i + 1], all_trees)[0, 0]

    def _check(self, image, slices) -> tuple[tuple[int, int, int], np.ndarray]:
        shape = check_stack(image)
        return shape, check_slices(slices, shape[0])

    # -- public API --------------------------------------------------------------------
    def predict_proba(self, image, slices: Sequence[int], *, block: int = 1) -> np.ndarray:
        """Class probabilities of the given slices, float32 ``(n, C, Y, X)``.

        Lazy: reads and computes features only for ``slices`` (and the z-context
        neighbours they need). Rows follow the order of ``slices``; probabilities
        sum to 1 over C.
        """
        (_, y, x), req = self._check(image, slices)
        out = np.empty((req.size, self.n_classes, y, x), dtype=np.float32)
        where = _positions(req)
        for z, probs in self._stream(image, req, block):
            out[where[z]] = probs
        return out

    def sample_proba(
        self, image, slices: Sequence[int], *, n_samples: int, rng: np.random.Generator, block: int = 1
    ) -> np.ndarray:
        """``T = n_samples`` probability samples from disjoint random groups of trees.

        The trees are shuffled with ``rng`` and split into ``n_samples`` groups of
        (nearly) equal size; each sample is one group's mean prediction. Costs one
        forest evaluation in total. Returns float32 ``(T, n, C, Y, X)``.
        """
        n_trees = len(self.forest.estimators_)
        if not 2 <= int(n_samples) <= n_trees:
            raise ConfigError(f"n_samples must be in 2..{n_trees} (one group of trees per sample), got {n_samples}")
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        groups = np.array_split(rng.permutation(n_trees), int(n_samples))
        (_, y, x), req = self._check(image, slices)
        out = np.empty((int(n_samples), req.size, self.n_classes, y, x), dtype=np.float32)
        where = _positions(req)
        for ids, feats in self._features(image, np.unique(req), block):
            for i, z in enumerate(ids):
                out[:, where[int(z)]] = self._group_proba(feats[i : i + 1], groups)[:, :1]
        return out

    def predict_stack(
        self,
        image,
        out=None,
        *,
        slices: Sequence[int] | None = None,
        block: int = 1,
        callback: Callable[[int, int], None] | None = None,
    ):
        """Stream probabilities of a whole stack (or ``slices``) into ``out``.

        Parameters
        ----------
        image : (Z, Y, X) array-like; read a block of slices at a time.
        out : where to write: float32 ``(Z, Y, X)`` pore probability for a binary model,
            ``(Z, C, Y, X)`` otherwise, e.g. ``activeseg.io.create_stack(path, shape,
            np.float32, kind="probabilities")`` or a ``np.memmap``. None allocates it in
            memory (NaN on slices not predicted); avoid that on large stacks.
        slices : global slice ids to predict (default all); others are left untouched.
        block : slices of features computed per step (memory: two blocks of
            ``block * F * Y * X * 4`` bytes).
        callback : ``callback(done, total)`` after every slice.

        Notes
        -----
        When ``out`` is a ``np.memmap`` (as :func:`activeseg.io.create_stack` returns),
        each written slice's pages are dropped from this process's resident set
        (``madvise(MADV_DONTNEED)``; the data stay in the page cache and the file), so
        RSS does not grow with the stack.

        Returns
        -------
        ``out``.
        """
        (z, y, x), req = self._check(image, slices)
        req = np.unique(req)
        binary = self.n_classes == 2
        shape = (z, y, x) if binary else (z, self.n_classes, y, x)
        if out is None:
            out = np.full(shape, np.nan, dtype=np.float32)
        elif tuple(getattr(out, "shape", ())) != shape:
            raise ConfigError(
                f"out has shape {tuple(getattr(out, 'shape', ()))}, expected {shape} "
                f"({'pore probability (Z, Y, X)' if binary else '(Z, C, Y, X)'})"
            )
        done = 0
        for z, probs in self._stream(image, req, block):
            out[z] = probs[1] if binary else probs
            release_pages(out, z, z + 1)
            done += 1
            if callback is not None:
                callback(done, int(req.size))
        if hasattr(out, "flush"):
            out.flush()
        return out

    def slice_scores(
        self, image, slices: Sequence[int], *, how: str = "mean", q: float = 0.9, block: int = 1
    ) -> dict[str, np.ndarray]:
        """Per-slice scores of the given slices: name -> float32 ``(n,)`` in ``slices`` order.

        - "entropy", "margin": per-pixel uncertainty (:func:`activeseg.uncertainty.entropy`,
          :func:`~activeseg.uncertainty.margin`; higher = more informative), reduced
          with :func:`~activeseg.uncertainty.reduce_slices` (``how``, ``q``).
        - "porosity": the predicted pore fraction (pixels whose most likely class is 1).
        """
        _, req = self._check(image, slices)
        scores = {name: np.full(req.size, np.nan, dtype=np.float32) for name in ("entropy", "margin", "porosity")}
        where = _positions(req)
        for z, probs in self._stream(image, np.unique(req), block):
            p = probs[None]
            kw = {"q": q, "pore_prob": p[:, 1]} if how == "boundary" else {"q": q}
            pos = where[z]
            scores["entropy"][pos] = reduce_slices(entropy(p), how, **kw)[0]
            scores["margin"][pos] = reduce_slices(margin(p), how, **kw)[0]
            scores["porosity"][pos] = np.float32(np.mean(np.argmax(probs, axis=0) == 1))
        return scores

    def spec(self) -> dict:
        """JSON-able description from which :func:`refit_rf` rebuilds this model."""
        return {
            "kind": SPEC_KIND,
            "version": SPEC_VERSION,
            "seed": self.seed,
            "forest": asdict(self.params),
            "features": self.features.to_dict(),
            "geometry": self.geometry.to_dict(),
            "n_classes": self.n_classes,
            "training": dict(self.training),
        }


def _positions(req: np.ndarray) -> dict[int, list[int]]:
    where: dict[int, list[int]] = {}
    for i, k in enumerate(req):
        where.setdefault(int(k), []).append(i)
    return where
