"""The session configuration: a TOML file's tables, checked in full before anything is written.

A config file has up to five tables (every key optional)::

    [geometry]  voxel_size = [z, y, x] (nm), alpha_deg, beam_sign
    [session]   n_classes, seed, export_radius, score_max_slices, score_reduction,
                bald_samples, pseudo_threshold, train_on_scribbles, sections,
                pseudo_train, pseudo_slices, pseudo_below, tile, export_margin,
                audit_tiles, stop_gain
    [rf]        keyword arguments of activeseg.bootstrap.fit_rf (n_estimators, ...)
    [model]     fields of activeseg.model.ModelConfig (arch, encoder, ...)
    [train]     fields of activeseg.train.TrainConfig (steps, patch_size, ...)

The configuration is frozen into a session's manifest at ``init``, so every key of every
table is checked there: unknown keys are refused with the valid list, every value is
checked for type and range against the dataclass or function it feeds, and the network's
architecture and encoder against segmentation-models-pytorch's registries. A message
names the table, the key, what was expected and what was given.
"""

from __future__ import annotations

import inspect
import math
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from activeseg import bootstrap as bs
from activeseg.errors import ConfigError
from activeseg.features import FeatureConfig
from activeseg.geometry import Geometry
from activeseg.uncertainty import REDUCTIONS

__all__ = ["SessionConfig", "TABLES", "load_config", "validate_config", "model_kwargs", "rf_kwargs"]

TABLES = ("geometry", "session", "rf", "model", "train")
"""The tables of a config file, in the order they are documented."""

_DEVICES = ("auto", "cpu", "cuda", "mps")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {_type_name(args[0]) if args else 'values'}s"
    if hint is type(None):
        return "nothing (leave the key out)"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a text in quotes"
    if hint is dict:
        return "a table"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return isinstance(value, (dict, hint))
    return True  # a hint this checker does not model: the receiving class checks it


def _check(table: str, key: str, value: Any, hint: Any, source: str) -> None:
    if not _matches(value, hint):
        raise ConfigError(
            f"{source}[{table}] {key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})"
        )


def _check_table(table: str, values: dict, hints: dict[str, Any], source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}[{table}] must be a table of key = value lines, got {values!r}")
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"{source}[{table}] has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(hints))}"
        )
    for key, value in values.items():
        _check(table, key, value, hints[key], source)


def _range(table: str, key: str, ok: bool, expected: str, value: Any, source: str) -> None:
    if not ok:
        raise ConfigError(f"{source}[{table}] {key}: expected {expected}, got {value!r}")


PSEUDO_TRAIN = ("auto", "on", "off")
"""When ``train`` adds pseudo-labels of unlabelled slices: "auto" while fewer than
``pseudo_below`` whole slices are labelled, always, or never."""


@dataclass(frozen=True)
class SessionConfig:
    """Everything a session needs to run its steps, stored in the manifest.

    ``rf``, ``model`` and ``train`` are keyword arguments for
    :func:`activeseg.bootstrap.fit_rf`, :class:`activeseg.model.ModelConfig` and
    :class:`activeseg.train.TrainConfig` (checked by :func:`validate_config`).

    ``sections`` declares the stack a set of unrelated 2D sections, not a z-stack: the
    RF uses 2D features only (:func:`rf_kwargs`), the network sees the single slice
    (:func:`model_kwargs`), no beam sign is estimated, and the files to correct hold just
    the slice (``export_radius`` is 0). False (the default, and what a session without
    the key means): a z-stack whose neighbouring slices are neighbours.

    Region queries (:mod:`activeseg.tiles`): ``tile`` is the side in pixels of the grid
    regions are tiles of (>= 16), ``export_margin`` the pixels of in-plane context written
    around a region to correct, ``audit_tiles`` how many random tiles ``query --audit``
    adds to a region round, and ``stop_gain`` the expected gain of another round below
    which the stopping rule says stop. A session made before these keys has none stored
    and gets these defaults (128, 32, 4, 0.005).
    """

    geometry: Geometry = field(default_factory=Geometry)
    n_classes: int = 2
    seed: int = 0
    export_radius: int = 3
    score_max_slices: int = 256
    score_reduction: str = "mean"
    bald_samples: int = 8
    pseudo_threshold: float = 0.9
    train_on_scribbles: bool = True
    sections: bool = False
    pseudo_train: str = "auto"
    pseudo_slices: int = 8
    pseudo_below: int = 10
    tile: int = 128
    export_margin: int = 32
    audit_tiles: int = 4
    stop_gain: float = 0.005
    rf: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(SessionConfig)
        for f in fields(self):
            if f.name != "geometry":
                _check("session", f.name, getattr(self, f.name), hints[f.name], "")
        _range("session", "n_classes", 2 <= self.n_classes <= 254, "an integer from 2 to 254", self.n_classes, "")
        _range("session", "seed", self.seed >= 0, "an integer >= 0", self.seed, "")
        _range("session", "export_radius", 0 <= self.export_radius <= 64, "an integer from 0 to 64 (context slices on each side)",
               self.export_radius, "")
        _range("session", "score_max_slices", self.score_max_slices >= 1, "an integer >= 1", self.score_max_slices, "")
        _range("session", "score_reduction", self.score_reduction in REDUCTIONS, f"one of {', '.join(REDUCTIONS)}",
               self.score_reduction, "")
        _range("session", "bald_samples", self.bald_samples >= 2, "an integer >= 2 (MC-dropout samples)", self.bald_samples, "")
        _range("session", "pseudo_threshold", 0.5 <= self.pseudo_threshold <= 1.0, "a probability from 0.5 to 1",
               self.pseudo_threshold, "")
        object.__setattr__(self, "pseudo_threshold", float(self.pseudo_threshold))
        _range("session", "pseudo_train", self.pseudo_train in PSEUDO_TRAIN, f"one of {', '.join(PSEUDO_TRAIN)}",
               self.pseudo_train, "")
        _range("session", "pseudo_slices", self.pseudo_slices >= 1, "an integer >= 1 (unlabelled slices pseudo-labelled)",
               self.pseudo_slices, "")
        _range("session", "pseudo_below", self.pseudo_below >= 1, "an integer >= 1 (labelled slices)", self.pseudo_below, "")
        _range("session", "tile", self.tile >= 16, "an integer >= 16 (tile side in pixels of the region grid)", self.tile, "")
        _range("session", "export_margin", 0 <= self.export_margin <= 4096,
               "an integer from 0 to 4096 (pixels of context around a region to correct)", self.export_margin, "")
        _range("session", "audit_tiles", self.audit_tiles >= 1, "an integer >= 1 (random audit tiles of a region query)",
               self.audit_tiles, "")
        _range("session", "stop_gain", 0.0 < self.stop_gain < 1.0,
               "a number between 0 and 1 (the expected gain of another round below which to stop)", self.stop_gain, "")
        object.__setattr__(self, "stop_gain", float(self.stop_gain))
        if self.sections:  # unrelated sections have no neighbours to show around a slice
            object.__setattr__(self, "export_radius", 0)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["geometry"] = self.geometry.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SessionConfig:
        d = dict(d)
        geo = d.pop("geometry", None)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown session setting(s) {', '.join(sorted(unknown))}; valid: "
                f"{', '.join(sorted(known - {'geometry', 'rf', 'model', 'train'}))} "
                "and the tables [geometry], [rf], [model], [train]"
            )
        if d.get("sections") is True and d.get("export_radius", 0) != 0:
            raise ConfigError(
                f"[session] export_radius: expected 0 (or leave it out) with sections = true (init --sections), "
                f"got {d['export_radius']!r}; independent 2D sections have no neighbouring slices "
                "to export around a slice to correct"
            )
        return cls(geometry=_geometry(geo or {}, ""), **d)


def _geometry(values: dict, source: str) -> Geometry:
    hints = {"voxel_size": list[float] | None, "alpha_deg": float, "beam_sign": int | None}
    _check_table("geometry", values, hints, source)
    if values.get("voxel_size") is not None:
        vs = values["voxel_size"]
        _range("geometry", "voxel_size", len(vs) == 3 and all(v > 0 for v in vs),
               "three positive numbers [z, y, x] in nm", vs, source)
    if "beam_sign" in values:
        _range("geometry", "beam_sign", values["beam_sign"] in (None, 1, -1), "1 or -1 (leave it out to estimate it)",
               values["beam_sign"], source)
    if "alpha_deg" in values:
        _range("geometry", "alpha_deg", 0 < values["alpha_deg"] < 90,
               "an angle between 0 and 90 degrees (52 FEI/Thermo, 54 Zeiss)", values["alpha_deg"], source)
    return Geometry.from_dict(values)


def _signature_hints(fn) -> dict[str, Any]:
    """Keyword parameters of ``fn`` and their types (from annotations)."""
    hints = typing.get_type_hints(fn)
    return {p: hints.get(p, Any) for p, par in inspect.signature(fn).parameters.items()
            if par.kind == par.KEYWORD_ONLY and par.default is not inspect.Parameter.empty}


def _dataclass_hints(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)
            if f.init and (f.default is not MISSING or f.default_factory is not MISSING)}


def model_kwargs(cfg: SessionConfig) -> dict:
    """Keyword arguments for :class:`activeseg.model.ModelConfig` from a session config.

    A ``sections`` session feeds the network the single slice (``offsets = (0,)``).
    """
    kw = dict(cfg.model)
    if "offsets" in kw:
        kw["offsets"] = tuple(kw["offsets"])
    if cfg.sections:
        kw["offsets"] = (0,)
    if "decoder_channels" in kw and kw["decoder_channels"] is not None:
        kw["decoder_channels"] = tuple(kw["decoder_channels"])
    kw.setdefault("n_classes", cfg.n_classes)
    return kw


def rf_kwargs(cfg: SessionConfig) -> dict:
    """Keyword arguments for :func:`activeseg.bootstrap.fit_rf` from a session config.

    ``[rf] features`` (a table) becomes a :class:`~activeseg.features.FeatureConfig`; a
    ``sections`` session uses its 2D features only (:meth:`FeatureConfig.two_d`: no
    z-context or parallax features, so no slice reads another and no beam sign is
    estimated).
    """
    kw = dict(cfg.rf)
    feats = kw.get("features")
    if isinstance(feats, dict):
        feats = FeatureConfig.from_dict(feats)
    if cfg.sections:
        feats = (feats if isinstance(feats, FeatureConfig) else FeatureConfig()).two_d()
    if feats is not None:
        kw["features"] = feats
    return kw


def _check_sections(cfg: SessionConfig, source: str) -> None:
    """Settings that read neighbouring slices contradict ``sections = true``: refuse them."""
    if not cfg.sections:
        return
    offsets = cfg.model.get("offsets")
    if offsets is not None and list(offsets) != [0]:
        raise ConfigError(
            f"{source}[model] offsets: expected [0] (or leave it out) with sections = true (init --sections), "
            f"got {offsets!r}; independent 2D sections give the network no z context"
        )
    feats = cfg.rf.get("features")
    if isinstance(feats, dict):
        for key in ("z_offsets", "parallax_offsets"):
            if feats.get(key):
                raise ConfigError(
                    f"{source}[rf.features] {key}: expected [] (or leave it out) with sections = true "
                    f"(init --sections), got {feats[key]!r}; independent 2D sections have no neighbouring slices to compare with"
                )


def validate_config(cfg: SessionConfig, *, source: str = "") -> SessionConfig:
    """Check ``[rf]``, ``[model]`` and ``[train]`` against what will receive them.

    ``source`` prefixes messages (e.g. ``"config file c.toml: "``). Imports torch and
    segmentation-models-pytorch only when ``[model]`` names an architecture or encoder.
    """
    rf_hints = {k: v for k, v in _signature_hints(bs.fit_rf).items() if k not in ("rng", "geometry", "n_classes")}
    _check_table("rf", cfg.rf, rf_hints, source)
    if isinstance(cfg.rf.get("features"), dict):
        _check_table("rf.features", cfg.rf["features"], _dataclass_hints(FeatureConfig), source)
        _wrap(lambda: FeatureConfig.from_dict(cfg.rf["features"]), "rf.features", source)
    _check_sections(cfg, source)
    for key in ("n_estimators", "min_samples_leaf", "max_pixels"):
        if key in cfg.rf:
            _range("rf", key, cfg.rf[key] >= 1, "an integer >= 1", cfg.rf[key], source)
    if cfg.rf.get("max_depth") is not None:
        _range("rf", "max_depth", cfg.rf["max_depth"] >= 1, "an integer >= 1 (leave it out for no limit)",
               cfg.rf["max_depth"], source)
    if cfg.rf.get("max_samples") is not None:
        _range("rf", "max_samples", 0 < cfg.rf["max_samples"] <= 1, "a fraction in (0, 1]", cfg.rf["max_samples"], source)

    if not cfg.model and not cfg.train:
        return cfg  # the defaults are valid; no need to import torch
    # torch: imported only when [model] or [train] are given, to check them
    from activeseg.model import ModelConfig
    from activeseg.train import TrainConfig

    _check_table("model", cfg.model, _dataclass_hints(ModelConfig), source)
    _check_table("train", cfg.train, _dataclass_hints(TrainConfig), source)
    mcfg = _wrap(lambda: ModelConfig(**model_kwargs(cfg)), "model", source)
    _wrap(lambda: TrainConfig(**cfg.train), "train", source)
    if "device" in cfg.train:
        dev = cfg.train["device"]
        _range("train", "device", dev in _DEVICES or (dev.startswith("cuda:") and dev[5:].isdigit()),
               f"one of {', '.join(_DEVICES)} or cuda:N", dev, source)
    if "arch" in cfg.model or "encoder" in cfg.model:
        from activeseg.model import available_architectures, available_encoders  # torch, smp

        archs = {a.lower() for a in available_architectures()} | {"resunet"}
        _range("model", "arch", mcfg.arch.lower() in archs,
               f"one of {', '.join(available_architectures())} (or resunet)", mcfg.arch, source)
        if mcfg.encoder.startswith("tu-"):
            import timm  # heavy: only for a tu-<timm> encoder

            _range("model", "encoder", timm.is_model(mcfg.encoder[3:]), "tu-<a timm model name>", mcfg.encoder, source)
        else:
            encoders = available_encoders()
            near = [e for e in encoders if e.startswith(mcfg.encoder[:4])][:6]
            _range("model", "encoder", mcfg.encoder in encoders,
                   f"an encoder of segmentation-models-pytorch ({', '.join(near or encoders[:6])}, ...; "
                   "or tu-<timm model>)", mcfg.encoder, source)
    return cfg


def _wrap(make, table: str, source: str):
    """Run a constructor that validates; its ValueError becomes a message naming the table."""
    try:
        return make()
    except ConfigError as exc:
        raise ConfigError(f"{source}[{table}] {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}[{table}] {exc}") from None


def load_config(path: Path) -> dict:
    """Read and check a TOML config file; returns a dict for :meth:`SessionConfig.from_dict`.

    Unknown tables and keys, and values of the wrong type, are refused here with the
    file, table and key in the message; ranges and the network names are checked by
    :func:`validate_config` (at ``init``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    source = f"config file {path}: "
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}not a text file (TOML is UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}not valid TOML: {exc}") from None
    unknown = set(data) - set(TABLES)
    if unknown:
        raise ConfigError(
            f"{source}unknown table(s) or top-level key(s) {', '.join(sorted(unknown))}; "
            f"use the tables {', '.join(f'[{t}]' for t in TABLES)}"
        )
    session_hints = {k: v for k, v in typing.get_type_hints(SessionConfig).items()
                     if k not in ("geometry", "rf", "model", "train")}
    _check_table("session", data.get("session", {}), session_hints, source)
    _geometry(data.get("geometry", {}), source)
    out = dict(data.get("session", {}))
    for key in ("geometry", "rf", "model", "train"):
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{source}[{key}] must be a table, got {data[key]!r}")
            out[key] = data[key]
    try:
        validate_config(SessionConfig.from_dict(out), source=source)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(source) else source + msg) from None
    return out
