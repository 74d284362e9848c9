"""Outputs people take away: the whole-stack segmentation of a session, a model applied to another stack.

Every output is checked first (:func:`activeseg.safety.check_output`: never an input,
never inside a session except ``exports/``, never a folder, enough free space), written
beside its target under a temporary name and moved into place at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from activeseg import io
from activeseg.errors import ConfigError, OutputError, SessionError
from activeseg.loop.blocks import predict_blocks
from activeseg.loop.evaluate import model_classes
from activeseg.loop.state import (
    Progress,
    current_entry,
    current_model,
    labels_dict,
    log,
    no_progress,
    open_image,
    session_config,
    session_inputs,
    shell_quote,
)
from activeseg.safety import atomic_write_bytes, check_output
from activeseg.session import Session


def check_output_values(values: Sequence[int | str] | None, n_classes: int = 2) -> tuple[int, ...]:
    """The uint8 values written for the classes (``--values``): one per class, ``0..C-1``.

    ``None`` gives the class ids themselves (``0,1`` for solid,pore; ``0,1,2`` for three
    phases).
    """
    n_classes = int(n_classes)
    if values is None:
        return tuple(range(n_classes))
    try:
        vals = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != n_classes or not all(0 <= v <= 255 for v in vals) or len(set(vals)) != len(vals):
        got = ",".join(map(str, values)) if values else "nothing"
        if n_classes == 2:
            raise ConfigError(
                f"--values takes two different numbers from 0 to 255 for solid,pore (e.g. 0,1 or 0,255 for Fiji); got {got}"
            )
        example = ",".join(str(round(k * 255 / (n_classes - 1))) for k in range(n_classes))
        raise ConfigError(
            f"--values takes {n_classes} different numbers from 0 to 255, one per class: this segmentation has "
            f"{n_classes} classes (0 = first solid, 1 = pore, 2.. further solid phases; e.g. {example}); got {got}"
        )
    return vals


def segment_to_file(model, image, out: Path, *, voxel_size, probabilities: bool, values: Sequence[int],
                    fixed: dict[int, np.ndarray] | None = None, progress: Progress = no_progress,
                    before_replace: Callable[[np.ndarray], None] | None = None, scheduler=None) -> np.ndarray:
    """Segment every slice of ``image`` into ``out`` (an ImageJ TIFF or an OME-Zarr store,
    after its suffix); returns the phase fractions per slice.

    ``values`` must already be checked (:func:`check_output_values`), one per class of
    the model.

    A binary model writes the float32 pore probability ``(Z, Y, X)`` (``probabilities``)
    or uint8 ``values`` for solid/pore (pore where the probability is at least 0.5); a
    model of C >= 3 classes writes the float32 class probabilities ``(Z, C, Y, X)`` (an
    ImageJ hyperstack with C channels) or uint8 ``values[k]`` where class k is the most
    probable. Slices in ``fixed`` (z -> class-id mask) are taken from their labels. The
    prediction runs block by block (:mod:`activeseg.loop.blocks`) in this process or on
    ``scheduler``'s workers, which write an OME-Zarr output's blocks themselves. The output
    is written under a temporary name (a hidden file beside a TIFF, ``NAME.zarr.partial``)
    and moved into place at the end; a failure or a kill leaves ``out`` as it was and
    removes what was written (and the folders made for ``out``). ``before_replace(fractions)``
    writes what goes with ``out`` (its porosity table) before it is moved into place, so
    that a failure there also leaves ``out`` as it was.

    Returns
    -------
    float64 ``(Z, C)``: the fraction of each slice predicted as each class (column 1 is
    the porosity).
    """
    n_classes = model_classes(model)
    if len(values) != n_classes:
        raise ConfigError(f"values holds {len(values)} numbers but the model has {n_classes} classes; give one per class")
    nz, ny, nx = (int(s) for s in image.shape)
    dtype: np.dtype
    if probabilities:
        shape: tuple[int, ...] = (nz, ny, nx) if n_classes == 2 else (nz, n_classes, ny, nx)
        dtype, kind, mode = np.dtype(np.float32), "probabilities", "probabilities"
    else:
        shape, dtype, kind, mode = (nz, ny, nx), np.dtype(np.uint8), "labels", "labels"
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    done = False
    writer = None
    try:
        writer = io.create_output(out, shape, dtype, voxel_size=voxel_size, kind=kind)
        fractions = predict_blocks(model, image, writer.array, mode=mode, values=values, fixed=fixed or {},
                                   scheduler=scheduler, worker_target=writer.worker_target,
                                   progress=lambda d, t: progress("inference", d, t))
        if before_replace is not None:
            before_replace(fractions)
        writer.commit()
        done = True
    except OutputError as exc:  # name the output the user gave, not our hidden temporary file or store
        msg = str(exc)
        for tmp in (out.with_name(f".{out.name}.tmp"), Path(f"{out}.partial")):
            msg = msg.replace(str(tmp), str(out))
        raise OutputError(msg) from exc
    finally:
        if writer is not None and not done:
            writer.abort()
        if not done:
            for folder in made:  # only empty folders go
                try:
                    folder.rmdir()
                except OSError:
                    break
    return fractions


def _output_name(out: Path) -> None:
    """Outputs are ImageJ TIFFs or OME-Zarr stores, after the suffix; refuse anything else early."""
    name = out.name.lower()
    if not (name.endswith((".tif", ".tiff")) or io.is_zarr_path(out)):
        raise OutputError(
            f"OUT {out} ends in neither .tif/.tiff (an ImageJ TIFF) nor .zarr (an OME-Zarr store); the output "
            f"format follows the name: give e.g. {out.with_suffix('.tif').name} or {out.with_suffix('.zarr').name}"
        )


def export_segmentation(
    session: Session,
    out: Path,
    *,
    probabilities: bool = False,
    values: Sequence[int | str] | None = None,
    progress: Progress = no_progress,
    scheduler=None,
) -> dict:
    """Whole-stack segmentation from the latest model, with labelled slices taken from
    their labels; plus porosity per slice as CSV beside it (``OUT.porosity.csv``; with
    C >= 3 classes also the fraction of every class, ``fraction_c0`` ...).

    ``out`` is an ImageJ TIFF (``.tif``) or an OME-Zarr store (``.zarr``).
    ``values``: one uint8 value per class (default the class ids ``0..C-1``).
    ``scheduler``: where the prediction runs (``"inline"``, ``"local:N"``, ``"tcp://..."``;
    :mod:`activeseg.cluster`)."""
    out = Path(out)
    n_classes = session_config(session).n_classes
    values = check_output_values(values, n_classes)
    csv = out.with_suffix(".porosity.csv")
    for path, option in ((out, "OUT"), (csv, "the porosity table")):
        check_output(path, inputs=session_inputs(session), sessions=[session.root], option=option)
    _output_name(out)
    cfg = session_config(session)
    full = labels_dict(session, kinds=("full",))

    def write_table(fractions: np.ndarray) -> None:
        if n_classes == 2:
            text = "z,porosity,labelled\n" + "".join(
                f"{z},{f[1]:.6f},{int(z in full)}\n" for z, f in enumerate(fractions))
        else:
            text = ("z,porosity," + ",".join(f"fraction_c{k}" for k in range(n_classes)) + ",labelled\n" + "".join(
                f"{z},{f[1]:.6f}," + ",".join(f"{v:.6f}" for v in f) + f",{int(z in full)}\n"
                for z, f in enumerate(fractions)))
        atomic_write_bytes(csv, text.encode())

    with open_image(session) as image:
        kind, version, model = current_model(session, image, progress=progress)
        fractions = segment_to_file(model, image, out, voxel_size=cfg.geometry.voxel_size, probabilities=probabilities,
                                    values=values, fixed=full, progress=progress, before_replace=write_table,
                                    scheduler=scheduler)
    res = {"out": str(out), "porosity_csv": str(csv), "model": version, "kind": kind,
           "porosity": float(np.mean(fractions[:, 1]))}
    if n_classes > 2:
        res["phase_fractions"] = [float(v) for v in fractions.mean(axis=0)]
    return res


def predict_to_file(model_path: Path, stack: Path, out: Path, *, values: Sequence[int | str] | None = None,
                    probabilities: bool = False, axes: str | None = None, progress: Progress = no_progress,
                    scheduler=None) -> dict:
    """Apply a trained network (a session's latest, or a model directory) to another stack.

    ``values``: one uint8 value per class of the network (default the class ids ``0..C-1``).
    The result holds ``intensity_distance`` (how far the stack's normalised intensities are
    from the training stack's, :meth:`activeseg.network.SegModel.intensity_drift`; None for
    a model saved without a training profile) and ``warning`` (the sentence to show when
    that distance is above its threshold, else None). ``scheduler`` as in
    :func:`export_segmentation`."""
    from activeseg.network import load_model  # torch

    model_path = Path(model_path)
    inputs: list[tuple[str, str | None]] = [("stack to segment", str(stack))]
    sessions = []
    rf_current = False
    if (model_path / "activeseg.json").exists():
        s = Session.open(model_path)
        if not s.manifest.get("model"):
            raise SessionError(
                f"session {model_path} has no trained network yet; run `activeseg train {shell_quote(model_path)}`"
            )
        cur = current_entry(s.manifest)
        rf_current = cur["kind"] != "resunet"
        model_dir = s.path(s.manifest["model"]["path"] if rf_current else cur["path"])
        inputs += [("session's network", str(model_dir)), *session_inputs(s)]
        sessions.append(s.root)  # named as a session (OUT may go to its exports/ folder)
    else:
        model_dir = model_path
        inputs.append(("model", str(model_path)))  # nothing is written into a model folder
    check_output(out, inputs=inputs, sessions=sessions, option="OUT")
    _output_name(Path(out))
    model = load_model(model_dir)
    values = check_output_values(values, model_classes(model))
    if sessions and rf_current:
        gate: dict = next((r["gate"] for r in reversed(s.manifest["rounds"]) if r.get("gate")), {})
        figs = (f" (held-out solid IoU {gate['incumbent']:.4f} vs {gate['candidate']:.4f} for its last network)"
                if gate.get("verified") else "")
        log.warning("session %s: its current model is the Random Forest, which scored higher than its networks on "
                    "held-out labelled pixels%s; predict applies the best network, which may be worse here. To "
                    "segment this session's own stack use `activeseg export`; to improve the network, label more "
                    "slices or train longer (--steps)", model_path, figs)
    with io.open_stack(stack, axes=axes) as image:
        drift = model.intensity_drift(image)  # normalisation travels with the stack; this says how far it went
        segment_to_file(model, image, Path(out), voxel_size=image.voxel_size, probabilities=probabilities,
                         values=values, progress=progress, scheduler=scheduler)
    return {"out": str(out), "model": str(model_dir),
            "intensity_distance": None if drift is None else round(drift.distance, 4),
            "warning": None if drift is None else drift.message}
