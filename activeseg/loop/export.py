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
from activeseg.loop.evaluate import predict_pore_prob
from activeseg.loop.state import (
    Progress,
    current_model,
    labels_dict,
    no_progress,
    open_image,
    session_config,
    session_inputs,
    shell_quote,
)
from activeseg.safety import atomic_write_bytes, check_free_space, check_output, os_error_message
from activeseg.session import Session


def check_output_values(values: Sequence[int | str]) -> tuple[int, int]:
    """The two uint8 values written for solid and pore (``--values``)."""
    try:
        vals = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 2 or not all(0 <= v <= 255 for v in vals) or vals[0] == vals[1]:
        raise ConfigError(
            f"--values takes two different numbers from 0 to 255 for solid,pore (e.g. 0,1 or 0,255 for Fiji); "
            f"got {','.join(map(str, values)) if values else 'nothing'}"
        )
    return vals


def segment_to_file(model, image, out: Path, *, voxel_size, probabilities: bool, values: tuple[int, int],
                     fixed: dict[int, np.ndarray] | None = None, progress: Progress = no_progress,
                     before_replace: Callable[[list[float]], None] | None = None) -> list[float]:
    """Segment every slice of ``image`` into the TIFF ``out``; returns the porosity per slice.

    ``values`` must already be checked (:func:`check_output_values`).

    Writes the float32 pore probability (``probabilities``) or uint8 ``values`` for
    solid/pore; slices in ``fixed`` (z -> 0/1 mask) are taken from their labels. The
    stacks are written beside ``out`` under temporary names and moved into place at the
    end; a failure or a kill leaves ``out`` as it was and removes the temporary files
    (and the folders made for ``out``). ``before_replace(porosity)`` writes what goes with
    ``out`` (its porosity table) before it is moved into place, so that a failure there
    also leaves ``out`` as it was.
    """
    lo, hi = values
    fixed = fixed or {}
    nz, ny, nx = (int(s) for s in image.shape)
    n_vox = nz * ny * nx
    check_free_space(out.parent, n_vox * (4 if probabilities else 5), what=f"writing {out}")
    tmp_prob = out.with_name(f".{out.name}.prob.tmp")
    tmp_seg = out.with_name(f".{out.name}.tmp")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    porosity: list[float] = []
    done = False
    try:
        prob = io.create_stack(tmp_prob, (nz, ny, nx), np.float32, voxel_size=voxel_size, kind="probabilities")
        predict_pore_prob(model, image, prob, progress=progress)
        if probabilities:
            for z, mk in fixed.items():
                prob[z] = mk.astype(np.float32)
            porosity = [float(np.mean(np.asarray(prob[z]) >= 0.5)) for z in range(nz)]
            prob.flush()
            del prob
            if before_replace is not None:
                before_replace(porosity)
            _replace(tmp_prob, out)
        else:
            seg = io.create_stack(tmp_seg, (nz, ny, nx), np.uint8, voxel_size=voxel_size, kind="labels")
            for z in range(nz):
                lab = fixed[z] if z in fixed else (np.asarray(prob[z]) >= 0.5).astype(np.uint8)
                porosity.append(float(np.mean(lab == 1)))
                seg[z] = np.where(lab == 1, hi, lo).astype(np.uint8)
            seg.flush()
            del seg, prob
            if before_replace is not None:
                before_replace(porosity)
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
    return porosity


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
    values: tuple[int, int] = (0, 1),
    progress: Progress = no_progress,
) -> dict:
    """Whole-stack segmentation from the latest model, with labelled slices taken from
    their labels; plus porosity per slice as CSV beside it (``OUT.porosity.csv``)."""
    out = Path(out)
    values = check_output_values(values)
    csv = out.with_suffix(".porosity.csv")
    for path, option in ((out, "OUT"), (csv, "the porosity table")):
        check_output(path, inputs=session_inputs(session), sessions=[session.root], option=option)
    _tiff_name(out)
    cfg = session_config(session)
    full = labels_dict(session, kinds=("full",))

    def write_table(porosity: list[float]) -> None:
        atomic_write_bytes(csv, ("z,porosity,labelled\n" + "".join(
            f"{z},{p:.6f},{int(z in full)}\n" for z, p in enumerate(porosity))).encode())

    with open_image(session) as image:
        kind, version, model = current_model(session, image, progress=progress)
        porosity = segment_to_file(model, image, out, voxel_size=cfg.geometry.voxel_size, probabilities=probabilities,
                                    values=values, fixed=full, progress=progress, before_replace=write_table)
    return {"out": str(out), "porosity_csv": str(csv), "model": version, "kind": kind, "porosity": float(np.mean(porosity))}


def predict_to_file(model_path: Path, stack: Path, out: Path, *, values: tuple[int, int] = (0, 1), probabilities: bool = False,
                    axes: str | None = None, progress: Progress = no_progress) -> dict:
    """Apply a trained network (a session's latest, or a model directory) to another stack."""
    from activeseg.network import load_model  # torch

    values = check_output_values(values)
    model_path = Path(model_path)
    inputs: list[tuple[str, str | None]] = [("stack to segment", str(stack))]
    sessions = []
    if (model_path / "activeseg.json").exists():
        s = Session.open(model_path)
        if not s.manifest.get("model"):
            raise SessionError(
                f"session {model_path} has no trained network yet; run `activeseg train {shell_quote(model_path)}`"
            )
        model_dir = s.path(s.manifest["model"]["path"])
        inputs += [("session's network", str(model_dir)), *session_inputs(s)]
        sessions.append(s.root)  # named as a session (OUT may go to its exports/ folder)
    else:
        model_dir = model_path
        inputs.append(("model", str(model_path)))  # nothing is written into a model folder
    check_output(out, inputs=inputs, sessions=sessions, option="OUT")
    _tiff_name(Path(out))
    model = load_model(model_dir)
    with io.open_stack(stack, axes=axes) as image:
        segment_to_file(model, image, Path(out), voxel_size=image.voxel_size, probabilities=probabilities,
                         values=values, progress=progress)
    return {"out": str(out), "model": str(model_dir)}
