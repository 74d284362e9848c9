"""Outputs people take away: the whole-stack segmentation of a session, a model applied to another stack.

Every output is checked first (:func:`activeseg.safety.check_output`: never an input,
never inside a session except ``exports/``, never a folder, enough free space), written
beside its target under a temporary name and moved into place at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from activeseg import io
from activeseg.errors import ConfigError, OutputError, SessionError
from activeseg.loop.evaluate import model_classes, predict_class_prob, predict_pore_prob
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
from activeseg.safety import atomic_write_bytes, check_free_space, check_output, os_error_message
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
                     before_replace: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Segment every slice of ``image`` into the TIFF ``out``; returns the phase fractions per slice.

    ``values`` must already be checked (:func:`check_output_values`), one per class of
    the model.

    A binary model writes the float32 pore probability ``(Z, Y, X)`` (``probabilities``)
    or uint8 ``values`` for solid/pore (pore where the probability is at least 0.5); a
    model of C >= 3 classes writes the float32 class probabilities ``(Z, C, Y, X)`` (an
    ImageJ hyperstack with C channels) or uint8 ``values[k]`` where class k is the most
    probable. Slices in ``fixed`` (z -> class-id mask) are taken from their labels. The
    stacks are written beside ``out`` under temporary names and moved into place at the
    end; a failure or a kill leaves ``out`` as it was and removes the temporary files
    (and the folders made for ``out``). ``before_replace(fractions)`` writes what goes
    with ``out`` (its porosity table) before it is moved into place, so that a failure
    there also leaves ``out`` as it was.

    Returns
    -------
    float64 ``(Z, C)``: the fraction of each slice predicted as each class (column 1 is
    the porosity).
    """
    n_classes = model_classes(model)
    if len(values) != n_classes:
        raise ConfigError(f"values holds {len(values)} numbers but the model has {n_classes} classes; give one per class")
    fixed = fixed or {}
    nz, ny, nx = (int(s) for s in image.shape)
    n_vox = nz * ny * nx
    if n_classes == 2:
        check_free_space(out.parent, n_vox * (4 if probabilities else 5), what=f"writing {out}")
    else:
        check_free_space(out.parent, n_vox * (4 * n_classes + (0 if probabilities else 1)), what=f"writing {out}")
    tmp_prob = out.with_name(f".{out.name}.prob.tmp")
    tmp_seg = out.with_name(f".{out.name}.tmp")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    fractions = np.zeros((nz, n_classes), dtype=np.float64)
    done = False
    try:
        if n_classes == 2:
            prob = io.create_stack(tmp_prob, (nz, ny, nx), np.float32, voxel_size=voxel_size, kind="probabilities")
            predict_pore_prob(model, image, prob, progress=progress)
        else:
            prob = io.create_stack(tmp_prob, (nz, n_classes, ny, nx), np.float32, voxel_size=voxel_size,
                                   kind="probabilities")
            predict_class_prob(model, image, prob, progress=progress)
        if probabilities:
            for z, mk in fixed.items():
                prob[z] = mk.astype(np.float32) if n_classes == 2 else _one_hot(mk, n_classes)
            for z in range(nz):
                fractions[z] = _slice_fractions(np.asarray(prob[z]), n_classes)
            prob.flush()
            del prob
            if before_replace is not None:
                before_replace(fractions)
            _replace(tmp_prob, out)
        else:
            seg = io.create_stack(tmp_seg, (nz, ny, nx), np.uint8, voxel_size=voxel_size, kind="labels")
            lut = np.asarray(values, dtype=np.uint8)
            for z in range(nz):
                if z in fixed:
                    lab = fixed[z]
                elif n_classes == 2:
                    lab = (np.asarray(prob[z]) >= 0.5).astype(np.uint8)
                else:
                    lab = np.argmax(np.asarray(prob[z]), axis=0).astype(np.uint8)
                if n_classes == 2:
                    por = float(np.mean(lab == 1))
                    fractions[z] = (1.0 - por, por)
                    seg[z] = np.where(lab == 1, lut[1], lut[0]).astype(np.uint8)
                else:
                    fractions[z] = np.bincount(lab.ravel(), minlength=n_classes)[:n_classes] / lab.size
                    seg[z] = lut[lab]
            seg.flush()
            del seg, prob
            if before_replace is not None:
                before_replace(fractions)
            _replace(tmp_seg, out)
        done = True
    except OutputError as exc:  # name the output the user gave, not our hidden temporary file
        msg = str(exc)
        for tmp in (tmp_prob, tmp_seg):
            msg = msg.replace(str(tmp), str(out))
        raise OutputError(msg) from exc
    finally:
        for tmp in (tmp_prob, tmp_seg):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # e.g. EROFS: nothing was made there; never hide the real error
                pass
        if not done:
            for folder in made:  # only empty folders go
                try:
                    folder.rmdir()
                except OSError:
                    break
    return fractions


def _one_hot(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 ``(C, Y, X)`` probabilities of a labelled slice (1 for its class, 0 elsewhere)."""
    return (np.arange(n_classes, dtype=np.uint8)[:, None, None] == mask[None]).astype(np.float32)


def _slice_fractions(prob: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of a slice's pixels per class from its probabilities ((Y, X) pore or (C, Y, X))."""
    if n_classes == 2:
        por = float(np.mean(prob >= 0.5))
        return np.array([1.0 - por, por])
    lab = np.argmax(prob, axis=0)
    return np.bincount(lab.ravel(), minlength=n_classes)[:n_classes] / lab.size


def _replace(tmp: Path, out: Path) -> None:
    """Move a finished temporary output into place (an OSError becomes one clear line)."""
    try:
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(os_error_message(exc, out)) from exc


def _tiff_name(out: Path) -> None:
    """Outputs are ImageJ TIFFs: a name ending in another format's suffix would mislead."""
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise OutputError(
            f"OUT {out} does not end in .tif or .tiff; activeseg writes ImageJ TIFF stacks: "
            f"give a name like {out.with_suffix('.tif')}"
        )


def export_segmentation(
    session: Session,
    out: Path,
    *,
    probabilities: bool = False,
    values: Sequence[int | str] | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Whole-stack segmentation from the latest model, with labelled slices taken from
    their labels; plus porosity per slice as CSV beside it (``OUT.porosity.csv``; with
    C >= 3 classes also the fraction of every class, ``fraction_c0`` ...).

    ``values``: one uint8 value per class (default the class ids ``0..C-1``)."""
    out = Path(out)
    n_classes = session_config(session).n_classes
    values = check_output_values(values, n_classes)
    csv = out.with_suffix(".porosity.csv")
    for path, option in ((out, "OUT"), (csv, "the porosity table")):
        check_output(path, inputs=session_inputs(session), sessions=[session.root], option=option)
    _tiff_name(out)
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
                                    values=values, fixed=full, progress=progress, before_replace=write_table)
    res = {"out": str(out), "porosity_csv": str(csv), "model": version, "kind": kind,
           "porosity": float(np.mean(fractions[:, 1]))}
    if n_classes > 2:
        res["phase_fractions"] = [float(v) for v in fractions.mean(axis=0)]
    return res


def predict_to_file(model_path: Path, stack: Path, out: Path, *, values: Sequence[int | str] | None = None,
                    probabilities: bool = False, axes: str | None = None, progress: Progress = no_progress) -> dict:
    """Apply a trained network (a session's latest, or a model directory) to another stack.

    ``values``: one uint8 value per class of the network (default the class ids ``0..C-1``).
    The result holds ``intensity_distance`` (how far the stack's normalised intensities are
    from the training stack's, :meth:`activeseg.network.SegModel.intensity_drift`; None for
    a model saved without a training profile) and ``warning`` (the sentence to show when
    that distance is above its threshold, else None)."""
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
    _tiff_name(Path(out))
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
                         values=values, progress=progress)
    return {"out": str(out), "model": str(model_dir),
            "intensity_distance": None if drift is None else round(drift.distance, 4),
            "warning": None if drift is None else drift.message}
