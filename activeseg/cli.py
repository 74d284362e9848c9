"""The ``activeseg`` command line: thin typer commands over the library, rich output.

No logic lives here. Heavy modules (torch, modAL, matplotlib) are imported inside the
commands that need them, so ``activeseg --help`` and ``activeseg info`` stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from activeseg import __version__, io, loop, metrics, plots, registry, study
from activeseg import synth as synth_mod
from activeseg.cluster import parse_scheduler, use_scheduler
from activeseg.errors import ActiveSegError, ConfigError, OutputError
from activeseg.loop import check_output_values
from activeseg.safety import check_output, human_bytes, os_error_message

app = typer.Typer(
    name="activeseg",
    help="Active-learning segmentation of FIB-SEM stacks of highly porous materials.\n\n"
    "Example: activeseg synth demo_data --shape 64 128 128 --difficulty hard --preview demo_data/preview.png",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help text is shown as written: "[geometry]" stays "[geometry]"
)
# Output is plain text, never rich markup: a path or value holding "[/b]" prints as it is.
console = Console(soft_wrap=True, markup=False, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
_state = {"debug": False}


def _error_line(text: str) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), text))


def _handled(fn):
    """Turn expected errors into one red line and exit code 1 (traceback with --debug).

    Expected: activeseg's own errors (bad input or state) and operating-system errors
    (a full disk, a read-only place, a missing permission), which name the path and fix.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ActiveSegError as exc:
            if _state["debug"]:
                raise
            _error_line(str(exc))
            raise typer.Exit(1) from None
        except OSError as exc:
            if _state["debug"]:
                raise
            _error_line(os_error_message(exc, action="read or write"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            _error_line("interrupted; what was committed before is kept, run the command again to go on")
            raise typer.Exit(130) from None

    return wrapper


def _flag(help_text: str, *names: str):
    """A boolean flag shown as a flag in --help (no "<bool>" placeholder)."""
    return typer.Option(False, *names, help=help_text, metavar="")


def _say(label: str, text: str, style: str = "bold") -> None:
    """``label`` styled, then plain ``text`` (never read as markup)."""
    console.print(Text.assemble((label, style), " ", text))


def _setup_logging(debug: bool) -> None:

    logger = logging.getLogger("activeseg")
    logger.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False)]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    # tifffile logs its parser's complaints ("invalid page offset ...", at level ERROR) as
    # bare lines; activeseg says what is wrong with a file itself, in one line (--debug shows them)
    logging.getLogger("tifffile").setLevel(logging.WARNING if debug else logging.CRITICAL)


def _version(value: bool) -> None:
    if value:
        console.print(f"activeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit.", metavar=""),
    debug: bool = _flag("Show full tracebacks instead of one-line errors.", "--debug"),
) -> None:
    _state["debug"] = debug
    _setup_logging(debug)


def _fmt_voxel(vs) -> str:
    if vs is None:
        return "unknown (give --voxel-size Z Y X in nm)"
    return " x ".join(f"{v:g}" for v in vs) + " nm (z, y, x)"


_AXES = typer.Option(
    None, "--axes",
    help="How to read the file's dimensions: ZYX reads its one non-YX dimension as z (for a z-stack "
    "whose metadata say channels or time points).")


@app.command()
@_handled
def info(
    stack: Path = typer.Argument(..., help="TIFF stack (multipage, ImageJ, OME), a folder of slices, or a zarr/OME-Zarr store."),
    labels: Path | None = typer.Option(None, "--labels", help="Label stack or folder: report class fractions and porosity."),
    label_kind: str = typer.Option(
        "partial", "--label-kind", help="Label convention: partial (255 = unlabelled), mask, scribble (ilastik)."),
    pore_value: int | None = typer.Option(
        None, "--pore-value", metavar="{0,255}",
        help="The --labels file is a binary 0/255 mask (anti-aliased 252-254 allowed): which value is pore."),
    voxel_size: tuple[float, float, float] | None = typer.Option(
        None, "--voxel-size", help="Voxel size z y x in nm (overrides metadata)."),
    crop: str | None = typer.Option(None, "--crop", help="Region z0:z1,y0:y1,x0:x1 (half-open; ':' keeps an axis)."),
    preview: Path | None = typer.Option(None, "--preview", help="Write a PNG: a slice and a y-z reslice showing ghosts."),
    axes: str | None = _AXES,
    as_json: bool = _flag("Print machine-readable JSON instead of a table.", "--json"),
) -> None:
    """Describe a stack: shape, dtype, voxel size, size on disk, memmapped, intensities.

    Example: activeseg info stack.tif --labels truth.tif --preview look.png
    """
    if pore_value is not None and labels is None:
        raise ConfigError("--pore-value says how to read a 0/255 mask given with --labels; give --labels FILE")
    if preview is not None:
        check_output(preview, inputs=[("stack", stack), ("labels", labels)], option="--preview")
    st = io.open_stack(stack, crop=io.Crop.parse(crop) if crop else None, voxel_size=voxel_size, axes=axes)
    with st:
        result = io.stack_summary(st)
        if labels is not None:
            result["labels"] = io.label_summary(labels, st.shape, kind=label_kind, pore_value=pore_value)
        if preview is not None:
            plots.preview_png(preview, st, title=st.path.name)
            result["preview"] = str(preview)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{st.path.name}", show_header=False, title_justify="left")
    table.add_row("format", result["format"])
    table.add_row("shape (z, y, x)", " x ".join(map(str, result["shape"])))
    table.add_row("dtype", result["dtype"])
    if st.voxel_size is None and any(v is not None for v in st.voxel_size_partial):
        part = " x ".join("?" if v is None else f"{v:g}" for v in st.voxel_size_partial)
        table.add_row("voxel size", f"{part} nm (z, y, x); the unknown axes need --voxel-size Z Y X")
    else:
        table.add_row("voxel size", _fmt_voxel(st.voxel_size))
    table.add_row("size on disk", human_bytes(result["size_on_disk_bytes"]))
    table.add_row("memory-mapped", "yes" if result["memmapped"] else "no (read page by page)")
    if result["infobar_rows_cropped"]:
        table.add_row("info bar", f"{result['infobar_rows_cropped']} rows cropped")
    p = result["intensity_percentiles"]
    table.add_row(
        f"intensity (from {result['intensity_sample_slices']} slices)",
        f"p1 {p['p1']:g}  median {p['p50']:g}  p99 {p['p99']:g}",
    )
    if "labels" in result:
        lab = result["labels"]
        fr = ", ".join(f"class {c}: {f:.3f}" for c, f in lab["class_fractions"].items())
        table.add_row("labelled slices", str(lab["labelled_slices"]))
        table.add_row("class fractions", fr or "no labels found")
        if lab["porosity"] is not None:
            table.add_row("porosity (labelled px)", f"{lab['porosity']:.4f}")
    if preview is not None:
        table.add_row("preview", str(preview))
    console.print(table)
    if "labels" in result and result["labels"].get("warning"):
        console.print(f"warning: {result['labels']['warning']}", highlight=False)


_STRUCTURES = ("blobs", "spheres", "fibres", "membrane")
_DIFFICULTIES = ("easy", "medium", "hard")


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:

    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


@app.command()
@_handled
def synth(
    out_dir: Path = typer.Argument(..., help="Directory to write image.tif, truth.tif, depth.tif, synth.json."),
    shape: tuple[int, int, int] = typer.Option((64, 128, 128), "--shape", help="Volume size Z Y X in voxels."),
    porosity: float = typer.Option(
        0.8, "--porosity", help="Pore fraction of the truth (exact within 0.01); membrane: the support's."),
    porosity_gradient: float = typer.Option(
        0.0, "--porosity-gradient",
        help="blobs: last slice's porosity minus the first's (a graded material; the mean stays --porosity)."),
    structure: str = typer.Option(
        "blobs", "--structure", help="blobs | spheres | fibres | membrane (a dense skin over a porous support)."),
    difficulty: str = typer.Option(
        "hard", "--difficulty", help="easy | medium | hard (hard: back walls as bright as cut faces)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    phases: int = typer.Option(
        2, "--phases", help="2 (solid, pore) or 3 (two solids of different brightness and pore: truth 0/1/2, 1 = pore)."),
    phase_fraction: float = typer.Option(
        0.4, "--phase-fraction", help="--phases 3: fraction of the solid that is the second (darker) solid phase."),
    skin_fraction: float = typer.Option(
        0.25, "--skin-fraction", help="membrane: the skin's share of the volume along --layer-axis (from row / slice 0)."),
    skin_porosity: float = typer.Option(0.25, "--skin-porosity", help="membrane: porosity of the dense skin."),
    skin_scale: float = typer.Option(
        0.4, "--skin-scale", help="membrane: the skin's pore size relative to the support's (0 < F <= 1)."),
    transition_fraction: float = typer.Option(
        0.1, "--transition-fraction", help="membrane: share of the graded layer between skin and support."),
    layer_axis: str = typer.Option(
        "y", "--layer-axis",
        help="membrane: y (the skin is a band of image rows in every slice) | z (the skin is the first slices milled)."),
    drift: str = typer.Option(
        "none", "--drift",
        help="Imaging change along z: none | contrast (back walls brighten against cut faces, gain falls) | "
             "curtaining (stripes grow) | both. The truth is unchanged."),
    drift_strength: float = typer.Option(1.0, "--drift-strength", help="Scale of the --drift change, 0..3."),
    preview: Path | None = typer.Option(None, "--preview", help="Also write a PNG preview (slice, truth, y-z reslice)."),
) -> None:
    """Synthesize a FIB-SEM volume with pore-back artifacts and its ground truth.

    Example: activeseg synth data/hard --shape 120 192 192 --porosity 0.8 --difficulty hard --preview data/hard/look.png

    Graded (porosity 0.6 at the top, 0.9 at the bottom): activeseg synth data/graded --porosity 0.75 --porosity-gradient 0.3

    Three phases (an electrode: pore plus two solids): activeseg synth data/sofc --porosity 0.4 --phases 3

    Asymmetric membrane (a skin of porosity 0.25 over the top quarter of every slice, support 0.8):
    activeseg synth data/membrane --structure membrane --porosity 0.8 --skin-fraction 0.25 --skin-porosity 0.25
    --preview data/membrane/look.png

    Imaging change along z (back walls brighten against cut faces with depth, stripes grow):
    activeseg synth data/drift --drift both --drift-strength 1
    """
    _choice(structure, _STRUCTURES, "--structure")
    _choice(difficulty, _DIFFICULTIES, "--difficulty")
    _choice(layer_axis, synth_mod.LAYER_AXES, "--layer-axis")
    _choice(drift, synth_mod.DRIFTS, "--drift")

    taken = [n for n in ("image.tif", "truth.tif", "depth.tif", "synth.json") if (out_dir / n).exists()]
    if taken:
        raise OutputError(f"{out_dir} already holds {', '.join(taken)}; synth never writes over files (a session may "
                          "use them): give a new folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file; give a folder for image.tif, truth.tif, depth.tif and synth.json")
    if preview is not None:
        check_output(preview, inputs=[], option="--preview")
    with console.status(f"synthesizing {structure} volume {shape[0]}x{shape[1]}x{shape[2]} ({difficulty})..."):
        vol = synth_mod.synthesize(
            shape, structure=structure, porosity=porosity, porosity_gradient=porosity_gradient, difficulty=difficulty,
            rng=np.random.default_rng(seed), phases=phases, phase_fraction=phase_fraction, skin_fraction=skin_fraction,
            skin_porosity=skin_porosity, skin_scale=skin_scale, transition_fraction=transition_fraction,
            layer_axis=layer_axis, drift=drift, drift_strength=drift_strength,
        )
        paths = synth_mod.save_synth(out_dir, vol)
    otsu = metrics.otsu_baseline(vol.image, vol.truth, depth=vol.depth)
    table = Table(title=f"synthetic volume in {out_dir}", show_header=False, title_justify="left")
    table.add_row("shape (z, y, x)", " x ".join(map(str, vol.image.shape)))
    table.add_row("structure / difficulty", f"{structure} / {difficulty}")
    table.add_row("true porosity", f"{float(np.mean(vol.truth == 1)):.4f}")
    if phases != 2:
        fr = metrics.phase_fractions(vol.truth, phases)
        table.add_row("phase fractions (0, 1 = pore, 2)", ", ".join(f"{f:.4f}" for f in fr))
    if porosity_gradient:
        pz = np.mean(vol.truth == 1, axis=(1, 2))
        table.add_row("porosity first / last slice", f"{pz[0]:.3f} / {pz[-1]:.3f}")
    title = f"{structure}, {difficulty}, porosity {porosity}"
    mem = vol.params.get("membrane")
    if mem:
        unit = "rows" if mem["layer_axis"] == "y" else "slices"
        table.add_row(f"membrane layers ({unit})",
                      f"skin {mem['skin'][0]}-{mem['skin'][1] - 1} porosity {mem['porosity_skin']:.3f}, "
                      f"support {mem['support'][0]}-{mem['support'][1] - 1} porosity {mem['porosity_support']:.3f}")
        title = (f"membrane, {difficulty}: skin {unit} {mem['skin'][0]}-{mem['skin'][1] - 1} (porosity "
                 f"{mem['porosity_skin']:.2f}) over support (porosity {mem['porosity_support']:.2f})")
    fac = vol.params.get("drift_factors")
    if fac:
        table.add_row(f"drift ({drift}, strength {drift_strength:g})",
                      f"first / last slice: back wall x{fac['wall'][0]:.2f} / x{fac['wall'][-1]:.2f}, gain "
                      f"x{fac['gain'][0]:.2f} / x{fac['gain'][-1]:.2f}, curtain x{fac['curtain'][0]:.2f} / "
                      f"x{fac['curtain'][-1]:.2f}")
        title += f"; drift {drift} x{drift_strength:g}"
    grey = float(np.mean((vol.truth == 1) & (vol.depth > 0) & (vol.depth <= 5)))
    table.add_row("grey pores (wall <= 5 slices)", f"{grey:.3f} of all pixels")
    table.add_row(
        "Otsu threshold" + (" (pore vs rest)" if phases != 2 else ""),
        f"accuracy {otsu['accuracy']:.3f}, porosity {otsu['porosity_pred']:.3f} "
        f"(error {otsu['porosity_error']:+.3f}), solid IoU {otsu['iou_solid']:.3f}",
    )
    g = vol.geometry
    table.add_row("geometry", f"alpha {g.alpha_deg:g} deg, beam sign {g.beam_sign:+d}, voxel {_fmt_voxel(g.voxel_size)}")
    for name, p in paths.items():
        table.add_row(name, str(p))
    if preview is not None:

        plots.preview_png(preview, vol.image, truth=vol.truth, title=title)
        table.add_row("preview", str(preview))
    console.print(table)


@app.command("strategies")
@_handled
def strategies_cmd(
    as_json: bool = _flag("Print machine-readable JSON instead of a table.", "--json"),
) -> None:
    """List the query strategies: built-ins and installed plugins (load errors in red).

    Example: activeseg strategies
    """
    infos = registry.describe_strategies()
    if as_json:
        print(json.dumps([
            {"name": i.name, "source": i.source, "version": i.version, "unit": i.unit, "requires": list(i.requires),
             "params": dict(i.params), "description": i.description, "error": i.error}
            for i in infos
        ], indent=2, default=str))
        return
    table = Table(title="query strategies", title_justify="left", expand=True)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("source", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    table.add_column("needs", overflow="fold", ratio=1)
    table.add_column("parameters (defaults)", overflow="fold", ratio=2)
    table.add_column("description", overflow="fold", ratio=4)
    for i in infos:  # plain text (the console reads no markup): a "[/x]" in a description prints as it is
        needs = ", ".join(i.requires) or "-"
        if i.requires_depends_on_params:
            needs += " *"
        params = ", ".join(f"{k}={v!r}" for k, v in i.params.items()) or "-"
        desc = Text(i.description) if i.ok else Text(f"failed to load: {i.error}", style="red")
        table.add_row(i.name, i.source, i.unit, needs, params, desc)
    console.print(table)
    console.print("* depends on the parameters; use one with: activeseg query SESSION --strategy NAME --param key=value")


# --- sessions ----------------------------------------------------------------------------


@contextlib.contextmanager
def _progress():
    """A progress display; yields ``progress(stage, done, total)`` for the library.

    In a terminal: rich progress bars. When stderr is not a terminal (piped, logged, a
    batch job): a plain line per stage at most every 10 s, so a log shows signs of life.
    """
    if not err_console.is_terminal:
        yield _plain_progress(err_console)
        return
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    ) as bar:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(int(total), 1))
            bar.update(tasks[stage], completed=int(done), total=max(int(total), 1))

        yield update


def _plain_progress(out: Console, every: float = 10.0):
    """``progress(stage, done, total)`` printing ``stage: done/total (pct), elapsed`` lines."""
    start: dict[str, float] = {}
    last: dict[str, float] = {}

    def update(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        t0 = start.setdefault(stage, now)
        finished = int(done) >= int(total)
        if stage in last and not finished and now - last[stage] < every:
            return
        if finished and last.get(stage) == -1.0:
            return  # the end of a stage is said once
        last[stage] = -1.0 if finished else now
        pct = 100.0 * int(done) / max(int(total), 1)
        out.print(f"{stage}: {int(done)}/{int(total)} ({pct:.0f} %), {now - t0:.0f} s", highlight=False)

    return update


def _open(session: Path, relink: Path | None = None):

    return loop.open_session(session, relink_to=relink)


def _parse_ints(text: str | None, what: str) -> list[int] | None:

    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated slice numbers like 0,120,240; got {text!r}") from None


def _parse_values(text: str | None, n_classes: int = 2) -> tuple[int, ...]:
    """``--values``, one number 0..255 per class (solid,pore for two), checked, with that message;
    None gives the class ids ``0..C-1``."""
    return check_output_values(None if text is None else [t for t in text.replace(" ", "").split(",") if t], n_classes)


def _value_list(text: str | None) -> list[str] | None:
    """``--values`` split at the commas (checked against the model's classes once it is known)."""
    return None if text is None else [t for t in text.replace(" ", "").split(",") if t]


def _parse_params(items: list[str]) -> dict:

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--param takes key=value (e.g. --param min_gap=10), got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v  # a bare string such as score=bald
    return out


def _say_next(sess) -> None:

    _say("next:", loop.next_step(sess))


_SESSION_ARG = typer.Argument(..., help="Session directory.")
_RELINK = typer.Option(None, "--relink", help="The stack moved or was re-saved: use this path (same shape and dtype).")
_SCHEDULER = typer.Option(
    None, "--scheduler",
    help="Where the whole-stack work runs: inline (this process, the default), local:N (N worker processes "
         "on this machine) or tcp://HOST:PORT (a running Dask cluster; see README 'Large stacks and clusters').")


@app.command()
@_handled
def init(
    session: Path = typer.Argument(..., help="New session directory."),
    image: Path = typer.Option(..., "--image", help="The FIB-SEM stack (TIFF, folder of slices, or a zarr / OME-Zarr store)."),
    truth: Path | None = typer.Option(
        None, "--truth", help="Ground-truth labels (simulated studies). Found beside a synth image.tif."),
    depth: Path | None = typer.Option(None, "--depth", help="Back-wall depth map of a synthetic volume (grey-pore metrics)."),
    config: Path | None = typer.Option(None, "--config", help="TOML file: [geometry] [session] [rf] [model] [train]."),
    voxel_size: tuple[float, float, float] | None = typer.Option(
        None, "--voxel-size", help="Voxel size z y x in nm (overrides metadata)."),
    crop: str | None = typer.Option(None, "--crop", help="Region z0:z1,y0:y1,x0:x1 of the stack to work on."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed of the session."),
    axes: str | None = _AXES,
    sections: bool = _flag(
        "The slices are independent 2D sections, not a z-stack: nothing uses a slice's neighbours "
        "(2D RF features, single-slice network input, no beam sign).", "--sections"),
    pore_value: int | None = typer.Option(
        None, "--pore-value", metavar="{0,255}",
        help="The --truth is a binary 0/255 mask (anti-aliased 252-254 allowed): which value is pore. "
        "A 0/255 truth without it is refused."),
    verify: bool = _flag(
        "Zarr inputs: also store the SHA-256 of every chunk (reads the whole store once); without it a store "
        "is fingerprinted by its chunk listing (names, sizes, times).", "--verify"),
) -> None:
    """Create a labelling session for a stack.

    The config file is checked in full here (every table and key), before anything is
    written. Without --sections, adjacent slices are checked to correlate, and a warning
    suggests --sections when they do not.

    Example: activeseg init runs/s1 --image data/hard/image.tif
    Example: activeseg init runs/s2 --image scan.ome.zarr --truth truth.zarr --verify
    """
    sess = loop.init_session(session, image, truth=truth, depth=depth, config=config, voxel_size=voxel_size, crop=crop,
                             seed=seed, axes=axes, sections=sections, pore_value=pore_value, verify=verify)
    m = sess.manifest
    geo = m["config"]["geometry"]
    console.print(f"created session {session} for {m['stack']['path']} "
                  f"({' x '.join(map(str, m['stack']['shape']))}, {m['stack']['dtype']})")
    if m["config"].get("sections"):
        sign = "not used (independent 2D sections)"
    else:
        sign = geo["beam_sign"] if geo["beam_sign"] is not None else "estimated from the stack"
    console.print(f"geometry: voxel {geo['voxel_size'] or 'unknown'} nm, alpha {geo['alpha_deg']:g} deg, "
                  f"beam sign {sign}; ground truth: {'yes' if m.get('truth') else 'no'}", highlight=False)
    if m["config"].get("sections"):
        console.print("sections: independent 2D sections (2D RF features, single-slice network input)", highlight=False)
    _say_next(sess)


@app.command("bootstrap")
@_handled
def bootstrap_cmd(
    session: Path = _SESSION_ARG,
    scribbles: Path | None = typer.Option(
        None, "--scribbles", help="Scribble file/folder, ilastik convention (0 = unlabelled, class c stored as c+1)."),
    labels: Path | None = typer.Option(None, "--labels", help="Fully labelled slices (0 solid, 1 pore, 255 unlabelled)."),
    slices: str | None = typer.Option(
        None, "--slices", help="Take these slices from the session's ground truth, e.g. 0,120,240."),
    simulate_scribbles: bool = _flag(
        "With --slices: draw simulated strokes from the truth instead of whole slices.", "--simulate-scribbles"),
    pore_value: int | None = typer.Option(
        None, "--pore-value", metavar="{0,255}",
        help="The --labels file is a binary 0/255 mask (anti-aliased 252-254 allowed): which value is pore. "
        "A 0/255 file without it is refused."),
    relink: Path | None = _RELINK,
) -> None:
    """Round 0: first labels and a Random Forest pre-segmentation.

    Example: activeseg bootstrap runs/s1 --slices 10,30,50 --simulate-scribbles
    """
    sess = _open(session, relink)
    with _progress() as progress:
        res = loop.bootstrap(sess, scribbles=scribbles, labels=labels, slices=_parse_ints(slices, "--slices"),
                             simulate_scribbles=simulate_scribbles, progress=progress, pore_value=pore_value)
    console.print(f"bootstrap: {len(res['slices'])} slice(s) {res['slices']} as {res['kind']} labels; {res['rf']}",
                  highlight=False)
    _say_next(sess)


@app.command("query")
@_handled
def query_cmd(
    session: Path = _SESSION_ARG,
    n: int = typer.Option(5, "-n", help="How many slices to query."),
    strategy: str = typer.Option("distributed", "--strategy", help="Query strategy (see `activeseg strategies`)."),
    param: list[str] = typer.Option([], "--param", help="Strategy parameter key=value (repeatable)."),
    audit: bool = _flag("Add one random slice: its correction cost estimates the current error honestly.", "--audit"),
    relink: Path | None = _RELINK,
    scheduler: str | None = _SCHEDULER,
) -> None:
    """Pick the next slices to correct and export them, pre-filled, for Fiji/napari.

    Slices of the previous round that are still waiting are carried over into the new
    round (a mask you already started correcting comes along as it is).

    Example: activeseg query runs/s1 -n 4 --strategy spaced_entropy --param min_gap=8
    """
    params = _parse_params(param)
    registry.prepare_query(strategy, params)  # a bad name or value fails before --relink changes anything
    sched = parse_scheduler(scheduler)
    sess = _open(session, relink)
    with use_scheduler(sched), _progress() as progress:
        rnd = loop.query(sess, n, strategy=strategy, params=params, audit=audit, progress=progress, scheduler=sched)
    folder = sess.path(f"rounds/r{rnd['index']:03d}")
    if rnd.get("unit") == "tiles":  # a round of regions: tiles of the session's grid
        _say_regions(sess, rnd, folder)
        return
    audit_note = f" (audit slice: {rnd['audit']})" if rnd.get("audit") is not None else ""
    carried = rnd.get("carried", {}).get("slices", [])
    picked = [z for z in rnd["queried"] if z not in carried]
    console.print(f"round {rnd['index']}: {rnd['strategy']} picked slices {picked}{audit_note} "
                  f"using the {rnd['model_kind']} model")
    if carried:
        console.print(f"carried over from round {rnd['carried']['from_round']}, still to correct: {carried}"
                      + (f" (your edits so far of {rnd['carried']['edited']} come along)" if rnd["carried"]["edited"] else ""))
    console.print(f"files to correct: {folder / 'zNNNN_mask.tif'} (see INSTRUCTIONS.txt there)")
    _say_next(sess)


def _region_names(pairs) -> str:
    return ", ".join(f"z{int(z):04d}_t{int(t):03d}" for z, t in pairs) or "none"


def _say_regions(sess, rnd: dict, folder: Path) -> None:
    """What `query` says about a round of regions."""
    carried = {tuple(r) for r in rnd.get("carried", {}).get("regions", [])}
    audit = {tuple(r) for r in rnd.get("audit_regions", [])}
    picked = [r for r in map(tuple, rnd["regions"]) if r not in carried and r not in audit]
    tile = int(rnd["tile"])
    console.print(f"round {rnd['index']}: {rnd['strategy']} picked {len(picked)} regions ({tile} x {tile} px tiles, "
                  f"zNNNN_tTTT = slice, tile) using the {rnd['model_kind']} model: {_region_names(picked)}"
                  + (f" (audit tiles: {_region_names(sorted(audit))})" if audit else ""), highlight=False)
    if carried:
        console.print(f"carried over from round {rnd['carried']['from_round']}, still to correct: "
                      f"{_region_names(sorted(carried))}", highlight=False)
    console.print(f"files to correct: {folder / 'zNNNN_tTTT_mask.tif'} (the tile only; see INSTRUCTIONS.txt there)",
                  highlight=False)
    _say_next(sess)


def _parse_regions(text: str | None, what: str) -> list[str] | None:
    """Region names ``z0012_t003`` separated by commas (None when not given)."""
    if text is None:
        return None
    names = [w.strip() for w in text.split(",") if w.strip()]
    if not names:
        raise ConfigError(f"{what} needs region names like z0012_t003 (slice 12, tile 3), comma separated")
    return names


@app.command("import")
@_handled
def import_cmd(
    session: Path = _SESSION_ARG,
    directory: Path | None = typer.Argument(None, help="Folder with corrected zNNNN masks (default: the round's export folder)."),
    slices: str | None = typer.Option(None, "--slices", help="Import only these slices (also imports masks left unchanged)."),
    skip: str | None = typer.Option(None, "--skip", help="Skip these queried slices (e.g. damaged ones)."),
    regions: str | None = typer.Option(
        None, "--regions", help="A round of regions: import only these (zNNNN_tTTT, comma separated; also unchanged ones)."),
    skip_regions: str | None = typer.Option(None, "--skip-regions", help="A round of regions: skip these (zNNNN_tTTT)."),
    relink: Path | None = _RELINK,
) -> None:
    """Import corrected masks of the open round (a few now and the rest later is fine).

    A round of regions imports the zNNNN_tTTT_mask.tif files (each the tile only).

    Example: activeseg import runs/s1 --skip 300
    """
    sess = _open(session, relink)
    res = loop.import_corrections(sess, directory, slices=_parse_ints(slices, "--slices"), skip=_parse_ints(skip, "--skip") or [],
                                  regions=_parse_regions(regions, "--regions"),
                                  skip_regions=_parse_regions(skip_regions, "--skip-regions"))
    if "imported_regions" in res:
        changed = res["region_cost"]
        console.print(f"  {len(res['imported_regions'])} regions imported, {sum(changed.values())} pixels corrected"
                      + (f" ({', '.join(f'{k}: {v}' for k, v in changed.items())})" if changed else ""), highlight=False)
        if res["skipped_regions"]:
            console.print(f"  skipped: {_region_names(res['skipped_regions'])}", highlight=False)
        if res["pending_regions"]:
            console.print(f"  still pending: {_region_names(res['pending_regions'])}", highlight=False)
        _say_next(sess)
        return
    for z, c in res["cost"].items():
        console.print(f"  slice {z}: imported, {c} pixels corrected", highlight=False)
    if res["skipped"]:
        console.print(f"  skipped: {res['skipped']}", highlight=False)
    if res["pending"]:
        console.print(f"  still pending: {res['pending']}", highlight=False)
    _say_next(sess)


_NAPARI_MISSING = 'napari is not installed: pip install "activeseg[napari]"'


@app.command("correct")
@_handled
def correct_cmd(
    session: Path = _SESSION_ARG,
    slice_: int | None = typer.Option(None, "--slice", help="Start with this queried slice (default: the first one waiting); "
                                      "in a round of regions, its first region waiting."),
    tile: int | None = typer.Option(None, "--tile", help="In a round of regions: start with a region of this tile "
                                    "(with --slice: that region)."),
) -> None:
    """Correct the queried slices (or regions) in napari: the slice with its z neighbours, the
    pre-filled mask to paint, the uncertainty as an overlay; a region shows its tile framed
    in its context, only the tile is painted. Ctrl-S saves and imports (the same import as
    `activeseg import`), N / Shift-N move on, K skips. The file round trip keeps working.

    Example: activeseg correct runs/s1 --slice 120
    """
    sess = _open(session)
    try:
        from activeseg.napari.correct import run_correction  # napari and Qt: the optional extra, loaded only here
    except ImportError as exc:
        if (exc.name or "").startswith("activeseg"):
            raise
        if (exc.name or "qtpy").split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"):
            # napari is there, a Qt binding is not (qtpy's error names no module)
            raise ConfigError(f"napari cannot start: {exc}; install a Qt binding: pip install pyqt5") from None
        err_console.print(_NAPARI_MISSING)
        raise typer.Exit(1) from None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("activeseg correct opens a window and there is no display here (DISPLAY is not set): run it "
                          "on a desktop, over ssh -X, or correct the files in the round folder and run activeseg import")
    run_correction(sess, z=slice_, t=tile)


@app.command("revert")
@_handled
def revert_cmd(
    session: Path = _SESSION_ARG,
    slice_: str | None = typer.Option(None, "--slice", help="Take back the labels of these slices, e.g. 40 or 40,88."),
    round_: int | None = typer.Option(None, "--round", help="Take back every label of this round (an open round is closed)."),
    reason: str | None = typer.Option(None, "--reason", help="A note kept with the tombstone."),
) -> None:
    """Undo a wrong import or a bad round: the next train no longer uses those labels.

    Nothing is deleted: a tombstone is appended to the session, and a reverted slice can
    be queried and labelled again later.

    Example: activeseg revert runs/s1 --slice 120
    """
    sess = _open(session)
    res = loop.revert(sess, slices=_parse_ints(slice_, "--slice"), round_index=round_, reason=reason)
    for r, zs in sorted(res["reverted"].items()):
        console.print(f"round {r}: labels of slice(s) {zs} reverted (kept on disk, no longer used)")
    console.print(f"labelled slices now: {res['labelled_slices'] or 'none'}; the current model was trained with the "
                  "reverted labels: retrain it (activeseg train) before trusting its exports")
    _say_next(sess)


@app.command("train")
@_handled
def train_cmd(
    session: Path = _SESSION_ARG,
    steps: int | None = typer.Option(None, "--steps", help="Training steps (mini-batches) for this round."),
    device: str | None = typer.Option(
        None, "--device", help="auto | cpu | cuda | mps (default: the session's [train] device, else auto)."),
    no_gate: bool = _flag("Make the new network the current model even when it scores lower than the model it "
                          "replaces on the held-out labelled pixels (the round records it).", "--no-gate"),
    relink: Path | None = _RELINK,
    scheduler: str | None = _SCHEDULER,
) -> None:
    """Train a ResUNet on every label so far; it replaces the current model only if it is better.

    The new network warm-starts from the best one so far and is compared with the current
    model (the Random Forest before any network) on held-out blocks of your labels that
    neither was fitted on; the better one pre-fills and exports. While few slices are
    labelled, the current model's confident predictions of unlabelled slices are added
    as down-weighted pseudo-labels ([session] pseudo_train). With ground truth, the stack
    is evaluated (figures include the labelled slices).

    Example: activeseg train runs/s1 --steps 200 --device auto
    """
    sched = parse_scheduler(scheduler)
    sess = _open(session, relink)
    with use_scheduler(sched), _progress() as progress:
        res = loop.train(sess, steps=steps, device=device, gate=not no_gate, progress=progress, scheduler=sched)
    h = res["history"]
    pseudo = h.get("pseudo")
    extra = f", pseudo-labels on {len(pseudo['slices'])} more" if pseudo else ""
    console.print(f"round {res['round']}: trained {h['steps_run']} steps in {h['seconds']:.0f} s on {h['device']} "
                  f"(labels on {len(h['labelled_slices'])} slices{extra}); network {res['model']}", highlight=False)
    if h.get("kept_previous"):
        console.print(Text.assemble(("no training step beat the network it started from on the held-out pixels; its "
                                     "weights are kept", "yellow"), " (more steps: --steps, or label more slices)"))
    style = "green" if res["gate"]["accepted"] and res["gate"]["verified"] else "yellow"
    console.print(Text(res["gate_sentence"], style=style))
    for what, mt, unl in (("current model", res.get("metrics"), res.get("metrics_unlabelled")),
                          ("new network", res.get("candidate_metrics"), res.get("candidate_metrics_unlabelled"))):
        if mt and (what == "current model" or not res["gate"]["accepted"]):
            held = (f"; on the {unl['n_slices']} slices no fit saw: accuracy {unl['accuracy']:.4f}, "
                    f"solid IoU {unl['iou_solid']:.4f}") if unl else ""
            console.print(f"{what} vs truth, whole stack (labelled slices included): accuracy {mt['accuracy']:.4f}, "
                          f"solid IoU {mt['iou_solid']:.4f}{held}", highlight=False)
    if res.get("metrics_fell"):
        f = res["metrics_fell"]
        console.print(Text(f"the current model's whole-stack {f['metric']} fell from {f['before']:.4f} to {f['after']:.4f} "
                           "this round", style="yellow"))
    _say_next(sess)


def _fitting_table(rows: list[dict], *, title: str | None = None, left: tuple[str, ...] = (),
                   drop_order: tuple[str, ...] = ()) -> Table:
    """A table that fits the terminal: columns without data ("-" everywhere) are left out,
    then the columns of ``drop_order`` one by one while the natural width exceeds the
    console; cells wrap (fold) rather than being cut."""
    cols = list(rows[0]) if rows else []
    cols = [c for c in cols if any(r[c] not in ("-", "", "n/a") for r in rows)] or cols

    def width(cs: list[str]) -> int:
        return sum(max([len(c)] + [len(str(r[c])) for r in rows]) + 3 for c in cs) + 1

    for c in drop_order:
        if width(cols) <= console.width:
            break
        if c in cols and len(cols) > 2:
            cols.remove(c)
    hidden = [c for c in list(rows[0]) if c not in cols] if rows else []
    caption = (f"({len(hidden)} column(s) hidden for width: {', '.join(hidden)}; widen the terminal or use --json)"
               if hidden and any(any(r[c] not in ("-", "", "n/a") for r in rows) for c in hidden) else None)
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in cols:
        table.add_column(c, justify="left" if c in left else "right", overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in cols))
    return table


def _pixels(n: int) -> str:
    """A pixel count for a table: 850 px, 12.3k px, 4.19M px."""
    n = int(n)
    return f"{n} px" if n < 10_000 else (f"{n / 1e3:.1f}k px" if n < 10_000_000 else f"{n / 1e6:.2f}M px")


def _sparkline(values, marks, width: int = 64) -> tuple[str, str]:
    blocks = " ▁▂▃▄▅▆▇█"
    v = np.asarray([np.nan if x is None else x for x in values], float)
    nz = v.size
    edges = np.linspace(0, nz, min(width, nz) + 1).astype(int)
    finite = v[np.isfinite(v)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    line, under = "", ""
    for a, b in zip(edges[:-1], edges[1:]):
        seg = v[a:b]
        seg = seg[np.isfinite(seg)]
        line += "·" if seg.size == 0 else blocks[int(round((seg.mean() - lo) / max(hi - lo, 1e-12) * (len(blocks) - 1)))]
        under += "▲" if any(a <= z < b for z in marks) else " "
    return line, under


@app.command("status")
@_handled
def status_cmd(
    session: Path = _SESSION_ARG,
    as_json: bool = _flag("Machine-readable JSON (labelled_slices, next_step, rounds, ...).", "--json"),
) -> None:
    """Rounds, labelled slices, metrics, correction cost, uncertainty along z, what next.

    Example: activeseg status runs/s1 --json
    """
    sess = loop.open_session(session, check_inputs=False)
    st = loop.status(sess)
    if as_json:
        print(json.dumps(st, indent=2))
        return
    console.print(f"session {st['session']}: {st['stack']['path']} "
                  f"({' x '.join(map(str, st['stack']['shape']))}); {st['n_labelled']} of {st['n_slices']} slices labelled")
    if st.get("sections"):
        console.print("sections: independent 2D sections (no z context)", highlight=False)
    rows = []
    for r in st["rounds"]:
        mt = r.get("metrics") or {}
        por = r.get("predicted_porosity")
        slices = ",".join(map(str, r["full_slices"] or r["queried"]))
        if r.get("unit") == "tiles":  # a round of regions: how many, on which slices
            slices = f"{len(r['regions'])} regions ({len({z for z, _ in r['regions']})} slices)"
        slices += f" (+{r['scribble_pixels']} px scribbles)" if r["scribble_pixels"] else ""
        if r.get("reverted"):
            slices += f" (reverted: {','.join(map(str, r['reverted']))})"
        rows.append({
            "round": str(r["index"]), "strategy": str(r["strategy"]), "status": str(r["status"]), "slices": slices,
            "cost/slice": "-" if r["correction_cost_frac"] is None else f"{100 * r['correction_cost_frac']:.1f} %",
            "reviewed": "-" if not r.get("reviewed_px") else _pixels(r["reviewed_px"]),
            "changed": "-" if not r.get("reviewed_px") else (
                f"{_pixels(r['changed_px'])} ({100 * r['changed_px'] / r['reviewed_px']:.1f} %)"),
            "audit err": "-" if r.get("audit_error") is None else f"{100 * r['audit_error']:.1f} %",
            "porosity (change)": (
                "-" if por is None else f"{por:.3f}" + (f" ({r['porosity_change']:+.3f})" if "porosity_change" in r else "")
            ),
            "solid IoU": "-" if "iou_solid" not in mt else f"{mt['iou_solid']:.4f}" + (" fell" if r.get("metrics_fell") else ""),
            "unlabelled": "-" if not r.get("metrics_unlabelled") else f"{r['metrics_unlabelled']['iou_solid']:.4f}",
            "class IoU": "-" if not r.get("class_iou") else "/".join(
                "n/a" if v is None else f"{v:.2f}" for v in r["class_iou"]),
            "accuracy": "-" if "accuracy" not in mt else f"{mt['accuracy']:.4f}",
        })
    console.print(_fitting_table(rows, left=("strategy", "status", "slices"),
                                 drop_order=("audit err", "accuracy", "cost/slice", "strategy", "class IoU", "unlabelled")))
    total = st.get("cost_total") or {}
    if total.get("reviewed_px"):
        console.print(f"correction cost so far: {_pixels(total['reviewed_px'])} reviewed, {_pixels(total['changed_px'])} "
                      "changed ('reviewed': the pixels of the corrected slices and regions, context excluded)",
                      style="dim", highlight=False)
    if any(r.get("metrics") for r in st["rounds"]):
        console.print("vs truth, current model: 'solid IoU' over the whole stack, labelled slices included; 'unlabelled' "
                      "over the slices no fit saw", style="dim", highlight=False)
    if st.get("n_classes", 2) > 2:
        latest = next((r for r in reversed(st["rounds"]) if r.get("class_iou")), None)
        classes = "/".join("1 pore" if k == 1 else str(k) for k in range(st["n_classes"]))
        console.print("solid IoU: mean over the solid phases; " + (
            f"class IoU ({classes})" if latest is None else f"class IoU r{latest['index']} ({classes}): "
            + "/".join("n/a" if v is None else f"{v:.2f}" for v in latest["class_iou"])), style="dim", highlight=False)
    cur = st["current_model"]
    console.print(f"current model: {'Random Forest' if cur['kind'] == 'rf' else 'network ' + str(cur['version'])}; "
                  f"{cur['why']}", highlight=False)
    if any(r.get("metrics_fell") for r in st["rounds"]):
        console.print("'fell': the current model's whole-stack figure (labelled slices included) dropped in that round",
                      style="yellow")
    if st["uncertainty"]:
        line, under = _sparkline(st["uncertainty"]["values"], st["labelled_slices"])
        console.print(f"{st['uncertainty']['name']} along z (top of stack on the left; ▲ = labelled):", highlight=False)
        console.print(f"  {line}\n  {under}", highlight=False)
    if st.get("stopping"):  # the stopping rule from the audits (query --audit)
        console.print(st["stopping"]["sentence"], highlight=False)
    else:
        console.print("when to stop: query with --audit for an estimate of the current error and a stop/continue advice; "
                      "meanwhile, the correction cost per slice and the porosity change flatten out.", style="dim")
    _say("next:", st["next_step"])


@app.command("export")
@_handled
def export_cmd(
    session: Path = _SESSION_ARG,
    out: Path = typer.Argument(..., help="Output .tif (ImageJ TIFF) or .zarr (OME-Zarr): uint8 segmentation, or float32 "
                                         "with --probabilities; never an input."),
    probabilities: bool = _flag(
        "Write probabilities instead of labels: the pore probability (2 classes) or one channel per class.",
        "--probabilities"),
    values: str | None = typer.Option(
        None, "--values",
        help="One value per class: solid,pore (default 0,1; e.g. 0,255 for Fiji); with C classes C values "
             "(default 0,1,...,C-1; e.g. 0,128,255)."),
    relink: Path | None = _RELINK,
    scheduler: str | None = _SCHEDULER,
) -> None:
    """Whole-stack segmentation from the latest model (corrected slices from their labels).

    The format follows OUT's name: .tif (ImageJ TIFF) or .zarr (OME-Zarr with a small
    pyramid, for napari and large stacks). OUT must not be an input of the session
    (stack, truth, depth) nor lie inside the session folder (except its exports/
    folder); an existing OUT is replaced only once the new one is complete.

    Example: activeseg export runs/s1 seg.tif --values 0,255
             activeseg export runs/s1 seg.zarr --scheduler local:4
    """
    n_classes = int(loop.open_session(session, check_inputs=False).manifest["config"].get("n_classes", 2))
    vals = _parse_values(values, n_classes)  # before --relink changes anything
    sched = parse_scheduler(scheduler)
    sess = _open(session, relink)
    existed = out.exists()
    with use_scheduler(sched), _progress() as progress:
        res = loop.export_segmentation(sess, out, probabilities=probabilities, values=vals, progress=progress,
                                       scheduler=sched)
    console.print(f"{'replaced' if existed else 'wrote'} {res['out']} (model {res['model']}); porosity per slice: "
                  f"{res['porosity_csv']}; mean porosity {res['porosity']:.4f}")
    if res.get("phase_fractions"):
        console.print("mean phase fractions (class 0, 1 = pore, 2, ...): "
                      + ", ".join(f"{f:.4f}" for f in res["phase_fractions"]), highlight=False)


@app.command("predict")
@_handled
def predict_cmd(
    model: Path = typer.Argument(..., help="A session (its latest network) or a model directory."),
    stack: Path = typer.Argument(..., help="The stack to segment."),
    out: Path = typer.Argument(..., help="Output .tif or .zarr (OME-Zarr); never an input (the stack, the model, the "
                                         "session's files)."),
    probabilities: bool = _flag(
        "Write probabilities instead of labels: the pore probability (2 classes) or one channel per class.",
        "--probabilities"),
    values: str | None = typer.Option(
        None, "--values", help="One value per class of the network: solid,pore (default 0,1); C values for C classes."),
    axes: str | None = _AXES,
    scheduler: str | None = _SCHEDULER,
) -> None:
    """Apply a trained network to another stack (the deliverable for your next sample).

    STACK may be a TIFF, a folder of slices or an OME-Zarr store; OUT's format follows
    its name (.tif or .zarr).

    Example: activeseg predict runs/s1 next_sample.tif next_sample_seg.tif
             activeseg predict runs/s1 big.zarr big_seg.zarr --scheduler tcp://10.0.0.5:8786
    """
    vals = _value_list(values)  # checked against the network's classes when it is loaded
    sched = parse_scheduler(scheduler)
    existed = out.exists()
    with use_scheduler(sched), _progress() as progress:
        res = loop.predict_to_file(model, stack, out, values=vals, probabilities=probabilities, axes=axes,
                                     progress=progress, scheduler=sched)
    console.print(f"{'replaced' if existed else 'wrote'} {res['out']} with {res['model']}")
    if res.get("warning"):
        console.print(Text("warning: " + res["warning"], style="yellow"))


@app.command("run")
@_handled
def run_cmd(
    session: Path = _SESSION_ARG,
    strategy: str = typer.Option(..., "--strategy", help="Query strategy for every round."),
    n: int = typer.Option(..., "-n", help="Slices per round."),
    rounds: int = typer.Option(..., "--rounds", help="Rounds to run (a resumed run continues to this total)."),
    first_strategy: str | None = typer.Option(None, "--first-strategy", help="Strategy for the first round (e.g. distributed)."),
    param: list[str] = typer.Option([], "--param", help="Strategy parameter key=value (repeatable)."),
    bootstrap_slices: int = typer.Option(
        3, "--bootstrap-slices", help="Evenly spaced slices with simulated scribbles, if not bootstrapped yet."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps per round."),
    relink: Path | None = _RELINK,
) -> None:
    """Simulate rounds with the ground-truth oracle: query -> correct -> train.

    Example: activeseg run runs/sim --strategy spaced_entropy -n 2 --rounds 3 --first-strategy distributed
    """
    sess = _open(session, relink)
    with _progress() as progress:
        done = loop.run(sess, strategy=strategy, n=n, rounds=rounds, first_strategy=first_strategy,
                        params=_parse_params(param), bootstrap_slices=bootstrap_slices, steps=steps, progress=progress)
    for r in done:
        mt = r.get("metrics") or {}
        kept = "" if r["gate"]["accepted"] else "; the new network was not better, the previous model is kept"
        fell = "; the whole-stack figure FELL this round" if r.get("metrics_fell") else ""
        console.print(f"round {r['round']}: {r['n_labelled']} labelled slices, current model vs truth (labelled slices "
                      f"included): accuracy {mt.get('accuracy', float('nan')):.4f}, solid IoU "
                      f"{mt.get('iou_solid', float('nan')):.4f}{kept}{fell}", highlight=False)
    _say_next(sess)


def _print_study(out: dict, study_dir: Path) -> None:
    if "paper_table" in out:
        rows = out["paper_table"]
        t = Table(title="Table 1 layout: loss (BCE) and accuracy at the paper's relative indices", title_justify="left")
        cols = list(rows[0].keys())
        for c in cols:
            t.add_column(c, justify="left" if c == cols[0] else "right")
        for r in rows:
            t.add_row(*[r[c] if isinstance(r[c], str) else ("n/a" if r[c] is None else f"{r[c]:.3f}") for c in cols])
        console.print(t)
        for line in out.get("index_proximity", []):
            console.print(f"within the network's 2.5D context of a training slice: {line}", style="dim")
    t = Table(title="whole stack, final model of each run", title_justify="left")
    cols = ["strategy", "schedule", "seed", "slices", "accuracy", "solid IoU", "BCE", "porosity error", "grey-pore error"]
    if any(r.get("current model", "network") != "network" for r in out["headline"]):
        cols.append("current model")  # the gate kept an earlier model (the RF, or a better network) in some run
    for c in cols:
        t.add_column(c, justify="left" if c in ("strategy", "schedule") else "right")
    for r in out["headline"]:
        t.add_row(*[
            str(r[c]) if isinstance(r[c], (str, int))
            else ("n/a" if r[c] is None else f"{r[c]:+.3f}" if "error" in c and "grey" not in c else f"{r[c]:.3f}")
            for c in cols
        ])
    console.print(t)
    if "label_efficiency" in out:
        t = Table(title="label efficiency: slices to reach 95 % / 99 % of the all-slices solid IoU "
                        f"({out['ceiling_iou_solid']:.3f})", title_justify="left")
        for c in ("strategy", "95 %", "99 %"):
            t.add_column(c)
        for k, v in out["label_efficiency"].items():
            t.add_row(k, *("not reached" if v[f] is None else str(v[f]) for f in ("0.95", "0.99")))
        console.print(t)
    if "reviewed_area" in out:
        t = Table(title="reviewed area (slice-equivalents, audits included) to reach 95 % / 99 % of the all-slices "
                        f"solid IoU ({out['ceiling_iou_solid']:.3f})", title_justify="left")
        for c in ("strategy", "95 %", "99 %", "reviewed in all"):
            t.add_column(c)
        for k, v in out["reviewed_area"].items():
            t.add_row(k, *("not reached" if v["slices"][f] is None else f"{v['slices'][f]:.2f}" for f in ("0.95", "0.99")),
                      "-" if v["max_slices"] is None else f"{v['max_slices']:.2f}")
        console.print(t)
    if out.get("stopping"):
        for line in out["stopping_text"].strip().splitlines()[-3:]:
            console.print(line, highlight=False)
    console.print(f"report: {out['report']}  (plots in {study_dir / 'plots'}, results in {study_dir / 'results.csv'})",
                  highlight=False)


@app.command("study")
@_handled
def study_cmd(
    study_dir: Path = typer.Argument(..., help="Study directory (re-running fills only missing runs)."),
    image: Path | None = typer.Option(None, "--image", help="Stack with ground truth; default: synthesize a hard volume."),
    truth: Path | None = typer.Option(None, "--truth", help="Ground truth of --image (found beside a synth image.tif)."),
    depth: Path | None = typer.Option(None, "--depth", help="Back-wall depth map (grey-pore metrics)."),
    preset: str | None = typer.Option(
        None, "--preset", help="paper | efficiency | regions (whole slices vs tiles by reviewed area, with audits and "
                               "the stopping rule) | demo; or give --strategies/--budgets."),
    strategies: str = typer.Option("initial,distributed", "--strategies", help="Comma-separated strategies for a custom grid."),
    budgets: str = typer.Option("5,20", "--budgets", help="Comma-separated budgets (fully labelled slices)."),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma-separated seeds (default 0; 0,1,2 for --preset efficiency)."),
    schedule: str = typer.Option("one-shot", "--schedule", help="one-shot | iterative | both."),
    k0: int = typer.Option(2, "--k0", help="Iterative: slices in the first round."),
    k: int = typer.Option(2, "--k", help="Iterative: slices per later round."),
    no_human: bool = _flag("RF pseudo-labels instead of the ground-truth oracle.", "--no-human"),
    audit: bool = _flag("Custom grid: every query adds its audit (a random slice, or random tiles), so the study "
                        "can replay the stopping rule.", "--audit"),
    shape: tuple[int, int, int] = typer.Option((600, 256, 256), "--shape", help="Size of the synthetic volume when no --image."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps per round (default: the train config's)."),
    config: Path | None = typer.Option(None, "--config", help="TOML session config for every run."),
    jobs: int = typer.Option(1, "--jobs", help="Runs in parallel on this machine: short for --scheduler local:N "
                                                 "(worker processes; the cores are split between them)."),
    scheduler: str | None = typer.Option(
        None, "--scheduler",
        help="Where the runs go, one task each: inline (one after another in this process, the default), local:N "
             "(N worker processes here) or tcp://HOST:PORT (a running Dask cluster whose workers read the data and "
             "write STUDY_DIR), e.g. --scheduler local:4. A run whose worker dies is retried and resumes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic volume."),
) -> None:
    """Compare query strategies against ground truth: tables, CSV/JSON, plots, report.md.

    Example: activeseg study studies/paper --preset paper --shape 600 256 256 --jobs 2
    (or --scheduler tcp://10.0.0.5:8786 on a Dask cluster)
    """
    study.study_scheduler(scheduler, jobs)  # --jobs and --scheduler that disagree fail before anything runs


    seeds_l = _parse_ints(seeds, "--seeds") or ([0, 1, 2] if preset == "efficiency" else [0])
    cfg = loop.load_config(config) if config else {}
    if steps is not None:
        cfg.setdefault("train", {})["steps"] = int(steps)
    if preset is not None:
        slice_shape: tuple[int, ...] = tuple(shape[1:])
        if preset == "regions" and image is not None:  # the tile rounds are sized from the stack's slices
            with io.open_stack(image) as stack:
                slice_shape = tuple(stack.shape[1:])
        runs = study.preset(preset, seeds_l, steps_per_round=cfg.get("train", {}).get("steps"), slice_shape=slice_shape)
    else:
        scheds = ("one-shot", "iterative") if schedule == "both" else (schedule,)
        budget_list = _parse_ints(budgets, "--budgets")
        assert budget_list is not None  # budgets is text (default "5,20"), never None
        runs = study.plan_grid([s.strip() for s in strategies.split(",") if s.strip()], budget_list,
                               seeds_l, scheds, k0=k0, k=k, human="none" if no_human else "truth", audit=audit)

    for r in runs:
        if r.strategy != study.CEILING:
            registry.prepare_query(r.strategy, r.params)  # bad names or parameters fail before anything runs
    with console.status("preparing the study's stack..."):
        image, truth, depth = study.study_inputs(study_dir, image, truth, depth, shape=shape, seed=seed)
    t0 = time.time()
    with _progress() as progress:
        results = study.run_study(study_dir, runs, image=image, truth=truth, depth=depth, config=cfg, jobs=jobs,
                                  scheduler=scheduler, progress=progress)
    failed = [res for res in results if res["status"] == "failed"]
    for res in failed:
        err_console.print(Text.assemble((f"run {res['name']} failed:", "red"), f" {res['error']}"))
    out = study.summarise(study_dir, title=f"activeseg study ({preset or 'custom'})", preset=preset)
    _print_study(out, study_dir)
    retried = {name: n for name, n in out.get("attempts", {}).items() if n > 1}
    if retried:  # a lost worker or an interrupted study: each attempt resumed from the run's session
        console.print("attempts per run (run again, resuming from its session; see attempts.json): "
                      + ", ".join(f"{name} {n}" for name, n in sorted(retried.items())), highlight=False)
    console.print(f"{len(results) - len(failed)} of {len(results)} runs done in {time.time() - t0:.0f} s", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
@_handled
def demo(
    out_dir: Path = typer.Option(Path("activeseg-demo"), "--out", help="Where to write the demo data and results."),
    quick: bool = _flag("A < 1 minute version (used by the tests).", "--quick"),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Run the main job on built-in data: a short study on a synthetic hard pore-back volume.

    Synthesizes a hard volume (porosity 0.8, back walls as bright as cut faces), then
    compares evenly spaced slices with spaced-entropy queries over three rounds of two
    slices each, on the CPU, and writes tables, plots and a report.

    Example: activeseg demo --out activeseg-demo
    """


    t0 = time.time()
    demo_run = study.demo_setup(quick=quick)
    shape, rounds, k, cfg = demo_run["shape"], demo_run["rounds"], demo_run["k"], demo_run["config"]
    with console.status(f"synthesizing a hard pore-back volume {shape[0]}x{shape[1]}x{shape[2]}..."):
        image, truth, depth = study.study_inputs(out_dir, None, None, None, shape=shape, seed=seed)

    vol = synth_mod.load_synth(out_dir / "data")
    otsu = metrics.otsu_baseline(vol.image, vol.truth, depth=vol.depth)
    _say("1. data:", f"synthetic hard pore-back volume {shape[0]}x{shape[1]}x{shape[2]}, porosity "
                  f"{float(np.mean(vol.truth == 1)):.2f}; a global Otsu threshold gets accuracy {otsu['accuracy']:.3f} "
                  f"and porosity {otsu['porosity_pred']:.3f} (error {otsu['porosity_error']:+.3f}): the grey pores fool it.")
    _say("2. active learning:", f"RF bootstrap on scribbles of 3 slices, then {rounds} rounds of {k} slice(s): "
                  "distributed vs spaced_entropy, ResUNet retrained each round (CPU).")
    runs = demo_run["runs"]
    with _progress() as progress:
        results = study.run_study(out_dir / "study", runs, image=image, truth=truth, depth=depth, config=cfg, progress=progress)
    failed = [res for res in results if res["status"] == "failed"]
    for res in failed:
        err_console.print(Text.assemble((f"run {res['name']} failed:", "red"), f" {res['error']}"))
    if failed:
        raise typer.Exit(1)
    out = study.summarise(out_dir / "study", title="activeseg demo")
    rows = sorted(out["rows"], key=lambda r: (r["strategy"], r["n_labelled"]))
    table_rows = [{
        "strategy": r["strategy"], "slices": str(r["n_labelled"]), "accuracy": f"{r['accuracy']:.3f}",
        "solid IoU": f"{r['iou_solid']:.3f}", "porosity err": f"{r['porosity_error']:+.3f}",
        "grey-pore err": "n/a" if r["grey_pore_error"] is None else f"{r['grey_pore_error']:.3f}",
        "corrected px": "-" if r["correction_cost"] is None else str(r["correction_cost"]),
    } for r in rows]
    t = _fitting_table(table_rows, title="3. results on the whole stack after each round (vs ground truth)",
                       left=("strategy",), drop_order=("corrected px", "grey-pore err"))
    console.print(t)
    console.print(f"(Otsu for comparison: accuracy {otsu['accuracy']:.3f}, solid IoU {otsu['iou_solid']:.3f})", highlight=False)
    console.print(f"report: {out['report']}; plots in {out_dir / 'study' / 'plots'}; data in {out_dir / 'data'}", highlight=False)
    console.print(f"done in {time.time() - t0:.0f} s. Next: try your own stack with `activeseg init`, or a bigger study with "
                  "`activeseg study DIR --preset paper`.", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()

if __name__ == "__main__":  # pragma: no cover
    main()
