"""Simulated studies: strategies x budgets x seeds x schedules against ground truth.

Each run is an ordinary session under ``STUDY/runs/NAME`` driven by the ground-truth
oracle, so a killed study resumes where it stopped and a re-run only fills missing runs.
Runs are independent tasks: in this process, on a local Dask cluster or on a remote one
(:mod:`activeseg.cluster`); a run whose worker is lost is run again elsewhere and resumes
from its session. Results are collected from the sessions into ``results.csv`` /
``results.json``, tables (the paper's Table 1 layout, the label-efficiency summary) and
plots linked from ``report.md``::

    STUDY/
      study.json            the inputs, config and run list
      data/                 the synthetic volume, when the study made one
      runs/<name>/          one session per run, with attempts.jsonl (one line per attempt)
      results.csv/.json     one row per (run, round); results.json holds no timings, so
                            identical studies give identical files
      attempts.json         the attempts of each run (more than one: a lost worker)
      paper_table.md        Table 1 layout (paper preset)
      label_efficiency.md   slices needed for 95 % / 99 % of the all-slices ceiling
      reviewed_area.md      reviewed area (slice-equivalents) needed for 95 % / 99 % of it
      stopping.md           where the stopping rule said stop vs the true learning curve
      plots/*.png, report.md

Cost (docs/architecture.md §8): each row carries the pixels reviewed and changed in its
round and cumulated over the run (``reviewed_px``, ``changed_px``, ``reviewed_cum``,
``changed_cum``, ``reviewed_slices`` = ``reviewed_cum`` / pixels of one slice), so
learning curves are drawn against reviewed and changed pixels as well as slices. Runs
with ``audit`` also carry the stopping rule as it stood after each round
(:func:`activeseg.loop.stopping.history`): ``est_iou``, ``est_lo``, ``est_hi``,
``expected_gain``, ``stop``, beside ``prefill_iou``, the true figure of the model the
estimate is about (the one that pre-filled the round).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from activeseg import cluster, io, loop, plots, registry, report, synth, tables
from activeseg.errors import ConfigError, SessionError
from activeseg.loop import stopping
from activeseg.metrics import paper_indices
from activeseg.safety import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "RunSpec",
    "paper_preset",
    "efficiency_preset",
    "regions_preset",
    "run_effort",
    "demo_preset",
    "plan_grid",
    "run_study",
    "study_scheduler",
    "execute_run",
    "read_attempts",
    "collect",
    "summarise",
]

log = logging.getLogger("activeseg")
SCHEDULES = ("one-shot", "iterative")
CEILING = "all-slices"
PAPER_CONFIG = {"train_on_scribbles": False}
"""The paper trains its network on the chosen slices only, not on the bootstrap scribbles."""
HUMANS = ("truth", "perfect", "none")
REGION_EFFORT = 0.10
"""The default person of a region run (``human="truth"``, no ``effort``): per tile, the
effort-limited oracle fixes the largest wrong regions up to 10 % of the tile's pixels.

Why 10 %: a decent model (solid IoU 0.85-0.9 at 80 % porosity) gets 2-4 % of the pixels
wrong, so on an average tile this person fixes everything that is wrong; the tiles a
region strategy picks are the bad ones (grey pores, thin walls: 10-30 % wrong early on),
and there a person working for a bounded time per tile fixes the largest mistakes that fit
the budget, skips one too large for it, and leaves what is left wrong as it was
pre-filled. 25 % would be a perfect corrector on nearly every tile, 5 % would leave
whole-wall mistakes unfixed in the first rounds. Audit units are always corrected
perfectly (the oracle ignores the effort there). Whole slices keep the perfect oracle."""


@dataclass(frozen=True)
class RunSpec:
    """One simulated run.

    Attributes
    ----------
    name : unique run name (its session directory).
    strategy : query strategy (or ``"all-slices"``: every slice labelled, the ceiling).
    budget : fully labelled slices at the end.
    schedule : "one-shot" (all ``budget`` slices in one query, like the paper) or
        "iterative" (``k0`` first, then ``k`` per round, retraining each round).
    seed : session seed; runs with the same seed share the simulated scribbles.
    label : name of the run's curve and column (default: the strategy for curves, "20
        initial" / "initial (iterative)" for per-slice columns; see :attr:`trial`).
    human : "truth" (the ground-truth oracle as the default person of the run's unit:
        perfect on whole slices, effort-limited on tiles, see :data:`REGION_EFFORT`),
        "perfect" (the perfect oracle on any unit) or "none" (the RF's confident
        predictions label the queried slices: no human at all).
    train_steps : training steps of each of this run's rounds (None: the study's train
        config).
    config : session settings of this run on top of the study's config (e.g. the paper's
        runs train on their chosen slices only: ``{"train_on_scribbles": False}``).
    audit : every query adds the audit (``query --audit``: one random slice, or
        ``[session] audit_tiles`` random tiles in a region round), corrected perfectly,
        so the stopping rule can be replayed against the truth. ``budget`` and the round
        sizes count the strategy's own picks, not the audit.
    effort : the corrector's pixel budget per unit (None: the default of ``human``).

    For a tile strategy (``unit="tiles"``) ``budget``, ``k0`` and ``k`` count tiles.
    """

    name: str
    strategy: str
    budget: int
    schedule: str = "one-shot"
    seed: int = 0
    k0: int = 2
    k: int = 2
    params: dict = field(default_factory=dict)
    label: str = ""
    human: str = "truth"
    train_steps: int | None = None
    config: dict = field(default_factory=dict)
    audit: bool = False
    effort: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.budget < 1 and self.strategy != CEILING:
            raise ConfigError(f"run {self.name}: budget must be >= 1")
        if self.human not in HUMANS:
            raise ConfigError(f"run {self.name}: human must be one of {', '.join(HUMANS)}, got {self.human!r}")
        if self.effort is not None and int(self.effort) < 1:
            raise ConfigError(f"run {self.name}: effort must be >= 1 pixel per unit (or None), got {self.effort}")

    @property
    def trial(self) -> str:
        """Column / legend name of the run: its label, else "20 initial" (one-shot) or
        "initial (iterative)"."""
        if self.label:
            return self.label
        return f"{self.budget} {self.strategy}" if self.schedule == "one-shot" else f"{self.strategy} (iterative)"

    @property
    def rounds(self) -> list[int]:
        """Slices queried in each round."""
        if self.schedule == "one-shot":
            return [self.budget]
        sizes = [min(self.k0, self.budget)]
        while sum(sizes) < self.budget:
            sizes.append(min(self.k, self.budget - sum(sizes)))
        return sizes


def _name(strategy: str, budget: int, schedule: str, seed: int) -> str:
    return f"{strategy}-{schedule}-k{budget:03d}-s{seed}"


def plan_grid(
    strategies: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    schedules: Sequence[str] = ("one-shot",),
    *,
    k0: int = 2,
    k: int = 2,
    human: str = "truth",
    audit: bool = False,
) -> list[RunSpec]:
    """The full grid of runs (an iterative run per budget is one session whose rounds
    pass through the smaller budgets, so only the largest budget is planned for it).

    ``audit``: every query adds its audit (see :class:`RunSpec`), for the stopping rule.
    """
    runs = []
    for schedule in schedules:
        for strategy in strategies:
            for seed in seeds:
                bs = [max(budgets)] if schedule == "iterative" else sorted(set(budgets))
                for b in bs:
                    runs.append(RunSpec(_name(strategy, b, schedule, seed), strategy, int(b), schedule, int(seed), k0, k,
                                        human=human, audit=bool(audit)))
    return runs


def paper_preset(seeds: Sequence[int] = (0,), *, iterative: bool = True) -> list[RunSpec]:
    """The paper's four trials (5 and 20 slices, initial vs distributed), plus
    spaced-entropy and hybrid trials at the same budgets: one-shot (all k slices picked
    from the RF's uncertainty after the shared scribble bootstrap) and, with
    ``iterative``, added round by round (5 at a time)."""
    runs = []
    for seed in seeds:
        for b in (20, 5):
            for strat in ("initial", "distributed", "spaced_entropy", "hybrid"):
                runs.append(RunSpec(_name(strat, b, "one-shot", seed), strat, b, "one-shot", seed, config=dict(PAPER_CONFIG)))
        if iterative:
            for strat in ("spaced_entropy", "hybrid"):
                runs.append(RunSpec(_name(strat, 20, "iterative", seed), strat, 20, "iterative", seed, k0=5, k=5,
                                    config=dict(PAPER_CONFIG)))
    return runs


def efficiency_preset(seeds: Sequence[int] = (0, 1, 2), *, steps_per_round: int | None = None) -> list[RunSpec]:
    """Learning curves over budgets 2..12 in rounds of 2 for six strategies, plus the
    all-slices ceiling.

    The ceiling trains once, for as many steps as an iterative run trains over all its
    rounds (``steps_per_round`` x 6; default the train config's steps x 6), so it is not
    undertrained next to the runs it bounds.
    """
    strategies = ("initial", "distributed", "random", "spaced_entropy", "hybrid", "ranked_batch")
    runs = plan_grid(strategies, [12], seeds, ("iterative",), k0=2, k=2)
    if steps_per_round is None:
        from activeseg.train import TrainConfig  # torch: only for the default step count

        steps_per_round = TrainConfig().steps
    n_rounds = len(runs[0].rounds)
    runs.append(RunSpec(CEILING, CEILING, 0, "one-shot", int(seeds[0]), train_steps=int(steps_per_round) * n_rounds))
    return runs


REGION_SLICE_STRATEGIES = ("distributed", "spaced_entropy")
REGION_TILE_STRATEGIES = ("tile_entropy", "tile_boundary", "tile_random")


def regions_preset(
    seeds: Sequence[int] = (0,),
    *,
    slice_shape: Sequence[int] = (256, 256),
    tile: int = 64,
    slice_k: int = 2,
    slice_rounds: int = 6,
    tile_rounds: int = 12,
    tile_k: int | None = None,
    steps_per_round: int | None = None,
    audit: bool = True,
) -> list[RunSpec]:
    """Whole slices against regions by reviewed area, with audits for the stopping rule.

    ``distributed`` and ``spaced_entropy`` add ``slice_k`` whole slices per round for
    ``slice_rounds`` rounds; ``tile_entropy``, ``tile_boundary`` and ``tile_random`` add
    ``tile_k`` tiles of ``tile`` pixels per round for ``tile_rounds`` rounds. By default
    ``tile_k`` makes a tile round review about a quarter of a slice round's pixels
    (``round(slice_k * tiles per slice / 4)``; 4 tiles of 64² for 2 slices of 192²), so
    the region curves reach further along the cost axis in finer steps. Every run audits
    (``audit``), tile runs correct with the effort-limited oracle
    (:data:`REGION_EFFORT`), whole slices with the perfect one. Every run has
    ``{"tile": tile}`` in its config (the grid of the tile runs and of the slice audits'
    per-tile confusions). The ceiling trains once for as many steps as the longest run
    trains over all its rounds.
    """
    if int(tile) < 16:
        raise ConfigError(f"tile must be >= 16 pixels, got {tile}")
    ny, nx = (int(v) for v in slice_shape[-2:])
    per_slice = -(-ny // int(tile)) * -(-nx // int(tile))
    if tile_k is None:
        tile_k = max(1, int(round(slice_k * per_slice / 4)))
    cfg = {"tile": int(tile)}
    runs = []
    for strategies, k, n_rounds in ((REGION_SLICE_STRATEGIES, slice_k, slice_rounds),
                                    (REGION_TILE_STRATEGIES, tile_k, tile_rounds)):
        for r in plan_grid(strategies, [k * n_rounds], seeds, ("iterative",), k0=k, k=k, audit=audit):
            runs.append(RunSpec(**{**asdict(r), "config": dict(cfg)}))
    if steps_per_round is None:
        from activeseg.train import TrainConfig  # torch: only for the default step count

        steps_per_round = TrainConfig().steps
    runs.append(RunSpec(CEILING, CEILING, 0, "one-shot", int(seeds[0]), config=dict(cfg),
                        train_steps=int(steps_per_round) * max(slice_rounds, tile_rounds)))
    return runs


def demo_preset(*, rounds: int = 3, k: int = 2) -> list[RunSpec]:
    """The demo: distributed vs spaced entropy, ``rounds`` rounds of ``k`` slices."""
    return [
        RunSpec(_name(s, rounds * k, "iterative", 0), s, rounds * k, "iterative", 0, k0=k, k=k)
        for s in ("distributed", "spaced_entropy")
    ]


PRESETS = ("paper", "efficiency", "regions", "demo")


def preset(name: str, seeds: Sequence[int] = (0,), *, steps_per_round: int | None = None,
           slice_shape: Sequence[int] | None = None) -> list[RunSpec]:
    """The runs of a named preset: "paper", "efficiency", "regions" or "demo" (each carries
    its own settings; ``slice_shape`` (Y, X) sizes the tile rounds of "regions")."""
    if name == "paper":
        return paper_preset(seeds)
    if name == "efficiency":
        return efficiency_preset(seeds, steps_per_round=steps_per_round)
    if name == "regions":
        return regions_preset(seeds, steps_per_round=steps_per_round,
                              slice_shape=tuple(slice_shape) if slice_shape else (256, 256))
    if name == "demo":
        return demo_preset()
    raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}; got {name!r}")


DEMO_MODEL = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}
"""The demo's light network (the default is deeper): a CPU demo in about a minute."""


def demo_setup(*, quick: bool = False) -> dict:
    """What ``activeseg demo`` runs: volume shape, rounds, slices per round, session
    config and runs (``quick``: a < 1 minute version used by the tests)."""
    if quick:
        shape, rounds, k = (16, 64, 64), 2, 1
        train = {"steps": 6, "patch_size": 64, "batch_size": 2, "eval_every": 3}
    else:
        shape, rounds, k = (48, 128, 128), 3, 2
        train = {"steps": 60, "patch_size": 96, "batch_size": 4, "eval_every": 20}
    config = {"model": dict(DEMO_MODEL), "train": train, "rf": {"n_estimators": 16}}
    return {"shape": shape, "rounds": rounds, "k": k, "config": config, "runs": demo_preset(rounds=rounds, k=k)}


def study_inputs(study_dir: Path, image: Path | None, truth: Path | None, depth: Path | None, *,
                 shape: Sequence[int], seed: int, porosity: float = 0.8) -> tuple[Path, Path, Path | None]:
    """The study's stack: the user's (with its truth, found beside a synth ``image.tif``),
    or a hard synthetic volume made once in ``STUDY_DIR/data`` (and reused after)."""
    if image is not None:
        image = Path(image)
        if truth is None:
            beside = image.parent / "truth.tif"
            if not beside.exists():
                raise ConfigError("a study needs ground truth: give --truth (or use a synth folder's image.tif)")
            truth = beside
            depth = depth or (image.parent / "depth.tif" if (image.parent / "depth.tif").exists() else None)
        return image, Path(truth), depth
    data = Path(study_dir) / "data"
    if (data / "synth.json").exists():
        made = json.loads((data / "synth.json").read_text())
        if (list(made.get("shape", [])) != list(shape) or made.get("seed", seed) != seed
                or made.get("porosity_requested", porosity) != porosity):
            raise ConfigError(
                f"{study_dir} already holds a synthetic volume of shape {tuple(made.get('shape', []))} "
                f"(seed {made.get('seed')}); asked for {tuple(shape)} (seed {seed}). Use another directory "
                f"(--out / STUDY_DIR) or delete {study_dir}"
            )
    else:
        vol = synth.synthesize(tuple(shape), structure="blobs", porosity=porosity, difficulty="hard", seed=seed)
        synth.save_synth(data, vol)
    return data / "image.tif", data / "truth.tif", data / "depth.tif"


# --- running ------------------------------------------------------------------------------------


def _run_done(run_dir: Path, spec: RunSpec) -> bool:
    mf = run_dir / "activeseg.json"
    if not mf.exists():
        return False
    m = json.loads(mf.read_text())
    trained = [r for r in m.get("rounds", []) if r.get("status") == "trained"]
    want = 1 if spec.strategy == CEILING else len(spec.rounds)
    return len([r for r in trained if r["index"] > 0 or spec.strategy == CEILING]) >= want


def _init_run(run_dir: Path, spec: RunSpec, inputs: dict, config: dict):
    """The run's new session (ground truth from the study's inputs, the run's settings on top)."""
    return loop.init_session(
        run_dir, Path(inputs["image"]), truth=Path(inputs["truth"]),
        depth=Path(inputs["depth"]) if inputs.get("depth") else None, config={**config, **spec.config}, seed=spec.seed,
    )


def execute_run(study_dir: Path, spec: RunSpec, inputs: dict, config: dict, *, threads: int | None = None) -> dict:
    """Run (or resume) one simulated run as a session; returns a short summary.

    Iterative and one-shot runs go through the one simulation driver
    (:func:`activeseg.loop.run_rounds`); the all-slices ceiling labels every slice and
    trains once.
    """
    if threads:
        import torch  # heavy: only to share the cores between parallel runs

        torch.set_num_threads(int(threads))
    run_dir = Path(study_dir) / "runs" / spec.name
    if _run_done(run_dir, spec):
        return {"name": spec.name, "status": "done", "resumed": False}
    if (run_dir / "activeseg.json").exists():
        session = loop.open_session(run_dir)
    else:
        session = _init_run(run_dir, spec, inputs, config)
    if spec.strategy == CEILING:
        if not session.manifest["rounds"]:
            loop.bootstrap(session, slices=list(range(int(session.manifest["stack"]["shape"][0]))))
        if session.manifest["rounds"][-1].get("status") != "trained":
            loop.train(session, steps=spec.train_steps)
        return {"name": spec.name, "status": "done"}
    plan = [(spec.strategy, spec.params, size) for size in spec.rounds]
    tile = int((session.manifest.get("config") or {}).get("tile", 128))
    _play(session, plan, human="none" if spec.human == "none" else "truth",
          bootstrap_count=int(inputs.get("bootstrap_slices", 3)), steps=spec.train_steps,
          effort=run_effort(spec, tile), audit=spec.audit)
    return {"name": spec.name, "status": "done"}


def _play(session, plan: list, *, human: str, bootstrap_count: int, steps: int | None, effort: int | None,
          audit: bool) -> None:
    """The run's rounds on the simulation driver (:func:`activeseg.loop.run_rounds`), with
    ``audit``: every query adds its audit."""
    loop.run_rounds(session, plan, human=human, bootstrap_count=bootstrap_count, steps=steps, effort=effort,
                    audit=audit)


def run_effort(spec: RunSpec, tile: int) -> int | None:
    """The corrector's pixel budget per unit of a run: its ``effort`` when given; else, with
    ``human="truth"`` and a tile strategy, :data:`REGION_EFFORT` of a ``tile`` x ``tile``
    tile (410 pixels of a 64² tile); else None (the perfect oracle)."""
    if spec.effort is not None:
        return int(spec.effort)
    if spec.human != "truth" or spec.strategy == CEILING:
        return None
    if registry.strategy_unit(spec.strategy) != "tiles":
        return None
    return max(1, int(round(REGION_EFFORT * int(tile) ** 2)))


ATTEMPTS = "attempts.jsonl"
"""Inside a run's session folder: one JSON line per attempt at the run (see :func:`read_attempts`)."""
RESUBMITS = 2
"""Times a run whose task was lost beyond the cluster's own retries is submitted again."""


def _last_trained_round(run_dir: Path) -> int | None:
    """Index of the last trained round committed in the run's session (None: none yet)."""
    mf = Path(run_dir) / "activeseg.json"
    if not mf.exists():
        return None
    rounds = json.loads(mf.read_text()).get("rounds", [])
    done = [int(r["index"]) for r in rounds if r.get("status") == "trained"]
    return max(done) if done else None


def read_attempts(run_dir: Path) -> list[dict]:
    """The attempts at a run, oldest first (empty for a run made before attempts were recorded).

    Each is ``{"attempt": k, "host", "pid", "started": ISO time, "resumed_from_round"}``:
    ``resumed_from_round`` is the index of the last trained round the attempt found in the
    session (None: it started from nothing), so a retried run shows where it went on.
    """
    path = Path(run_dir) / ATTEMPTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record_attempt(run_dir: Path) -> int:
    """Add this attempt's line to the run's ``attempts.jsonl``; returns its number (1 = first)."""
    previous = read_attempts(run_dir)
    k = len(previous) + 1
    line = {"attempt": k, "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "resumed_from_round": _last_trained_round(run_dir)}
    atomic_write_text(Path(run_dir) / ATTEMPTS, "".join(json.dumps(a) + "\n" for a in [*previous, line]))
    return k


def _run_task(args: tuple) -> dict:
    """One run as a task (module level: Dask workers import it by name).

    ``args`` = (study folder, the run's spec as a dict, inputs, run config, threads).
    Records the attempt, then runs or resumes the run; an error of the run is returned as
    a failed result (the study goes on), a lost worker is the cluster's to retry.
    """
    study_dir, spec_dict, inputs, config, threads = args
    logging.getLogger("activeseg").setLevel(logging.WARNING)
    spec = RunSpec(**spec_dict)
    run_dir = Path(study_dir) / "runs" / spec.name
    attempt = 0
    try:
        if not (run_dir / "activeseg.json").exists():
            _init_run(run_dir, spec, inputs, config)  # a session is made in an empty folder: then the attempt's line
        attempt = _record_attempt(run_dir)
        res = execute_run(Path(study_dir), spec, inputs, config, threads=threads)
    except Exception as exc:  # a failed run is recorded and the study goes on
        res = {"name": spec.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    res["attempts"] = attempt
    return res


def study_scheduler(scheduler: str | cluster.Scheduler | None, jobs: int = 1, n_runs: int | None = None) -> cluster.Scheduler:
    """Where a study's runs go: ``scheduler`` (``--scheduler``), or ``jobs`` > 1 = ``local:jobs``.

    A local cluster gets no more workers than there are runs to do (``n_runs``); ``jobs``
    alone falls back to inline when that leaves one.

    Raises
    ------
    ConfigError : ``jobs`` < 1, or ``jobs`` > 1 together with a scheduler other than
        ``local:jobs``.
    """
    if int(jobs) < 1:
        raise ConfigError(f"--jobs must be >= 1 (runs at once), got {jobs}")
    limit = max(1, n_runs) if n_runs is not None else None
    if scheduler is None:
        n = min(int(jobs), limit) if limit else int(jobs)
        return cluster.Scheduler("local", workers=n) if n > 1 else cluster.parse_scheduler(None)
    sched = cluster.parse_scheduler(scheduler)
    if int(jobs) > 1 and str(sched) != f"local:{int(jobs)}":
        raise ConfigError(
            f"--jobs {jobs} is short for --scheduler local:{jobs}, but --scheduler {sched} was given too; "
            "give only one of them"
        )
    if sched.kind == "local" and limit and sched.workers > limit:
        sched = cluster.Scheduler("local", workers=limit)
    return sched


def _worker_threads(client: Any) -> int:
    """Threads of the smallest worker of a remote cluster (each run's forest and torch use that many)."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        raise ConfigError("the Dask scheduler has no workers; start some with `dask worker ADDRESS` and run the study again")
    return max(1, min(int(w.get("nthreads", 1)) for w in workers.values()))


def run_study(
    study_dir: Path,
    runs: Sequence[RunSpec],
    *,
    image: Path,
    truth: Path,
    depth: Path | None = None,
    config: dict | None = None,
    jobs: int = 1,
    scheduler: str | cluster.Scheduler | None = None,
    threads: int | None = None,
    bootstrap_slices: int = 3,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict]:
    """Run every missing run of a study (each run one task) and return their summaries.

    The study's ``study.json`` records inputs, config and runs; calling again with the
    same directory skips finished runs and resumes interrupted ones.

    Parameters
    ----------
    jobs : runs at once on this machine: ``jobs`` > 1 is short for ``scheduler="local:jobs"``.
    scheduler : "inline" (default with ``jobs`` = 1: one run after another in this
        process), "local:N" (N worker processes) or the address of a Dask scheduler
        (``tcp://HOST:PORT``; its workers must read the inputs and write the study folder).
    threads : torch and forest threads of each run (default: the cores shared between a
        local cluster's workers, all cores inline, the smallest remote worker's threads).

    Returns
    -------
    One dict per run: ``name``, ``status`` ("done" or "failed" with ``error``) and, for a
    run this call ran, ``attempts`` (more than 1: its worker was lost and it resumed from
    its session elsewhere; every attempt is a line of ``runs/NAME/attempts.jsonl``).

    Raises
    ------
    ConfigError : duplicate run names, ``jobs`` and ``scheduler`` that disagree, a bad
        scheduler or an unreachable one.
    SessionError : the folder holds a study with other inputs, settings or runs.
    """
    study_dir = Path(study_dir)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"run names must be unique; duplicated: {sorted({n for n in names if names.count(n) > 1})}")
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"threads must be >= 1 (per run), got {threads}")
    study_scheduler(scheduler, jobs)  # a bad or contradictory choice fails before anything is written
    study_dir.mkdir(parents=True, exist_ok=True)
    inputs = {"image": str(Path(image).resolve()), "truth": str(Path(truth).resolve()),
              "depth": str(Path(depth).resolve()) if depth else None, "bootstrap_slices": int(bootstrap_slices)}
    spec_path = study_dir / "study.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old.get("inputs", {}).get("image") != inputs["image"] or old.get("config") != (config or {}):
            raise SessionError(
                f"{study_dir} holds a study with other inputs or settings; use a new directory "
                "(or delete the old one) to change them"
            )
        known = {r["name"]: r for r in old.get("runs", [])}
        for r in runs:
            if r.name in known and RunSpec(**known[r.name]) != r:
                raise SessionError(
                    f"{study_dir} already has a run {r.name!r} with other settings ({known[r.name]}); "
                    "use a new study directory to change them"
                )
        merged = list(old.get("runs", [])) + [asdict(r) for r in runs if r.name not in known]
    else:
        merged = [asdict(r) for r in runs]
    atomic_write_json(spec_path, {"inputs": inputs, "config": config or {}, "runs": merged})
    todo = [r for r in runs if not _run_done(study_dir / "runs" / r.name, r)]
    results: list[dict[str, Any]] = [{"name": r.name, "status": "done", "resumed": False} for r in runs if r not in todo]
    total = len(runs)
    if progress:
        progress("runs", len(results), total)
    sched = study_scheduler(scheduler, jobs, len(todo)) if todo else cluster.parse_scheduler(None)
    lost: list[tuple[tuple, BaseException]] = []
    # one run at a time per worker process: the run's own threads share the worker's cores
    with cluster.open_client(sched, threads_per_worker=1) as client:
        if threads is not None:
            n_threads = int(threads)
        elif sched.kind == "remote":
            n_threads = _worker_threads(client)
        else:
            n_threads = max(1, (os.cpu_count() or 1) // max(1, sched.workers))
        run_config = dict(config or {})
        if not sched.inline or threads is not None:  # each run's forest gets its share of the cores, like its torch
            run_config["rf"] = {**run_config.get("rf", {}), "n_jobs": n_threads}
        pending = [(str(study_dir), asdict(r), inputs, run_config, n_threads) for r in todo]
        for submission in range(RESUBMITS + 1):
            lost = []
            for i, res in cluster.run_tasks(client, _run_task, pending, key="activeseg-study", return_exceptions=True):
                if isinstance(res, BaseException):  # the task itself was lost (its runs' errors come back as results)
                    lost.append((pending[i], res))
                    continue
                results.append(res)
                if progress:
                    progress("runs", len(results), total)
            if not lost or submission == RESUBMITS:
                break
            log.warning("runs %s lost their task (%s); submitting them again (%d of %d)",
                        ", ".join(a[1]["name"] for a, _ in lost), lost[0][1], submission + 1, RESUBMITS)
            pending = [a for a, _ in lost]
    for a, exc in lost:  # still lost after the resubmissions: failed; running the study again resumes them
        run_dir = study_dir / "runs" / a[1]["name"]
        results.append({"name": a[1]["name"], "status": "failed", "attempts": len(read_attempts(run_dir)),
                        "error": f"{type(exc).__name__}: {exc} (run the study again to resume it)"})
        if progress:
            progress("runs", len(results), total)
    for res in results:
        if res["status"] == "failed":
            log.error("run %s failed: %s", res["name"], res["error"])
    return results


# --- collecting ----------------------------------------------------------------------------------


def collect(study_dir: Path) -> tuple[list[dict], dict]:
    """Rows (one per run x trained round) and per-run per-slice arrays of the last round."""
    study_dir = Path(study_dir)
    spec = json.loads((study_dir / "study.json").read_text())
    rows, per_run = [], {}
    for rd in spec["runs"]:
        run = RunSpec(**rd)
        mf = study_dir / "runs" / run.name / "activeseg.json"
        if not mf.exists():
            continue
        m = json.loads(mf.read_text())
        complete = _run_done(study_dir / "runs" / run.name, run)
        labelled: list[int] = []
        px = int(np.prod(m["stack"]["shape"][1:]))
        cfg = m.get("config") or {}
        hist = stopping.history(m, int(cfg.get("n_classes", 2)), stop_gain=float(cfg.get("stop_gain", 0.005))) \
            if run.audit else {}
        reviewed_cum = changed_cum = 0
        prefill_iou: float | None = None  # the true figure of the model current when the round was queried
        for r in m["rounds"]:
            if r["index"] > 0 or run.strategy == CEILING:  # corrected (or, with no human, pseudo-labelled) slices
                labelled += r.get("full_slices", []) + r.get("pseudo", [])
            reviewed, changed = _round_cost(r, px) if r["index"] > 0 else (0, 0)
            reviewed_cum += reviewed
            changed_cum += changed
            was_current = prefill_iou
            if r.get("metrics"):
                prefill_iou = r["metrics"].get("iou_solid")
            if r.get("status") != "trained" or not r.get("metrics"):
                continue
            est = hist.get(int(r["index"]))
            own = est["rounds"][-1] if est and est["rounds"][-1]["round"] == r["index"] else None
            costs = r.get("correction_cost", {})
            cost = (changed if r.get("cost") else sum(costs.get(str(z), 0) for z in r.get("full_slices", []))) \
                if r["index"] > 0 else None
            mt = r["metrics"]
            rows.append({
                # curves group by "strategy" (a run's label, when given, names its own curve)
                "run": run.name, "strategy": run.label or run.strategy, "trial": run.trial, "schedule": run.schedule,
                "seed": run.seed,
                "complete": complete,
                "round": r["index"], "n_labelled": len(set(labelled)),
                **{k: mt.get(k) for k in ("accuracy", "iou_solid", "iou_pore", "bce", "porosity_error", "grey_pore_error",
                                          "boundary_f1")},
                **{k: v for k, v in mt.items() if k.startswith("iou_c")},  # per-class IoU of C >= 3 classes
                "correction_cost": cost,
                "correction_cost_frac": (
                    (cost / (reviewed if r.get("cost") and reviewed else px * max(1, len(r.get("full_slices", [])))))
                    if cost is not None else None
                ),
                "train_seconds": (r.get("train") or {}).get("seconds"),
                # the gate: which model the round left current, the candidate's own figure, and a fall
                "model": ("network" if (r.get("gate") or {}).get("accepted", True) else "kept previous"),
                "candidate_iou_solid": (r.get("candidate_metrics") or {}).get("iou_solid"),
                "iou_solid_unlabelled": (r.get("metrics_unlabelled") or {}).get("iou_solid"),
                "fell": bool(r.get("metrics_fell")),
                "unit": r.get("unit", "slices"),
                "reviewed_px": reviewed, "changed_px": changed,
                "reviewed_cum": reviewed_cum if run.strategy != CEILING else len(set(labelled)) * px,
                "changed_cum": changed_cum,
                "reviewed_slices": (reviewed_cum if run.strategy != CEILING else len(set(labelled)) * px) / px,
                # the stopping rule as it stood once this round was corrected (runs with audits)
                "est_iou": own["iou"] if own else None, "est_lo": own["lo"] if own else None,
                "est_hi": own["hi"] if own else None, "est_units": own["n_units"] if own else None,
                "prefill_iou": was_current if own else None,
                "expected_gain": est["expected_gain"] if est else None,
                "stop": (est["decision"] == "stop") if est else None,
                "labelled": sorted(set(labelled)),
            })
            if r.get("metrics_file"):
                per_run[run.name] = {"file": str(study_dir / "runs" / run.name / r["metrics_file"]),
                                     "labelled": sorted(set(labelled)), "trial": run.trial,
                                     "strategy": run.strategy, "budget": run.budget,
                                     "seed": run.seed, "complete": complete, "run_dir": str(study_dir / "runs" / run.name)}
    return rows, per_run


def _round_cost(r: dict, px: int) -> tuple[int, int]:
    """(reviewed, changed) pixels of a round: its ``cost``, or for a round recorded before
    costs, its corrected whole slices (``px`` each) and their changed pixels."""
    cost = r.get("cost")
    if cost:
        return int(cost.get("reviewed_px", 0) or 0), int(cost.get("changed_px", 0) or 0)
    costs = r.get("correction_cost") or {}
    zs = [z for z in r.get("full_slices", []) if str(z) in costs]
    return len(zs) * px, int(sum(costs[str(z)] for z in zs))


def _context_reach(spec: dict) -> int:
    """Slices either side that the study's network sees as 2.5D context."""
    offsets = ((spec.get("config") or {}).get("model") or {}).get("offsets")
    if offsets is None:
        from activeseg.model import ModelConfig  # torch: only to read the model's context

        offsets = ModelConfig().offsets
    return max((abs(int(o)) for o in offsets), default=0)


def _mean_per_slice(items: list[dict]) -> dict:
    """Per-slice arrays averaged over runs (seeds); NaN where no run has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        return {k: np.nanmean(np.stack([it[k] for it in items]), axis=0) for k in items[0]}


def _load_per_slice(info: dict) -> dict:
    d = json.loads(Path(info["file"]).read_text())
    return {k: np.asarray([np.nan if v is None else v for v in vals], float) for k, vals in d["per_slice"].items()}


TIMINGS = ("train_seconds",)
"""Row keys that measure time: in results.csv, kept out of results.json."""


def summarise(study_dir: Path, *, title: str = "activeseg study", preset: str | None = None) -> dict:
    """Write results.csv/.json, attempts.json, tables, plots and report.md from the runs so far.

    ``results.json`` holds no timings (:data:`TIMINGS`; they are in ``results.csv``), so
    identical studies give identical files; ``attempts.json`` maps each run to its
    attempts (:func:`read_attempts`), and the returned ``attempts`` to their number.
    """
    study_dir = Path(study_dir)
    rows, per_run = collect(study_dir)
    if not rows:
        raise SessionError(f"no finished runs in {study_dir} yet")
    spec = json.loads((study_dir / "study.json").read_text())
    plot_dir = study_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    tables.table_csv(rows, study_dir / "results.csv")
    out: dict = {"rows": rows}
    names = sorted({r["strategy"] for r in rows})
    colors = {k: v["color"] for k, v in plots.line_styles(names).items()}
    sections: list[tuple[str, str] | tuple[str, Path, str]] = []  # (heading, Markdown) or (heading, image, caption)
    ceiling_rows = [r for r in rows if r["run"] == CEILING]
    ceiling = ceiling_rows[-1]["iou_solid"] if ceiling_rows else None
    curve_rows = [r for r in rows if r["run"] != CEILING]
    finals: dict[str, dict] = {}  # run -> its last round's row
    for r in curve_rows:  # last round of each run
        if r["run"] not in finals or r["round"] > finals[r["run"]]["round"]:
            finals[r["run"]] = r
    # the headline table: whole-stack figures of every run's final model
    headline = [
        {"run": r["run"], "strategy": r["trial"] + ("" if r["complete"] else " (unfinished)"), "schedule": r["schedule"],
         "seed": r["seed"], "slices": r["n_labelled"],
         "accuracy": r["accuracy"], "solid IoU": r["iou_solid"] if not r["fell"] else f"{r['iou_solid']:.3f} (fell)",
         "solid IoU, unlabelled": r["iou_solid_unlabelled"],
         "BCE": r["bce"], "porosity error": r["porosity_error"], "grey-pore error": r["grey_pore_error"],
         "current model": r["model"],
         "reviewed (slices)": round(r["reviewed_slices"], 2),
         **({"class IoU": tables.class_iou_text(r)} if tables.class_ious(r) else {})}
        for r in sorted(finals.values(), key=lambda r: (r["n_labelled"], r["strategy"], r["seed"]))
    ]
    out["headline"] = headline
    sections.append(("Whole-stack results (final model of each run; labelled slices included, except in "
                     "'solid IoU, unlabelled': the slices no fit saw)", tables.markdown_table(headline)))
    # per-slice figures of each trial's final model, averaged over seeds; unfinished runs left out
    trials: dict[str, list[dict]] = {}
    for name, info in per_run.items():
        if name != CEILING and info["complete"]:
            trials.setdefault(info["trial"], []).append(info)
    unfinished = sorted(n for n, info in per_run.items() if not info["complete"])
    if trials:
        paper_cols = ("initial", "distributed")  # the paper's column order first: 20 initial, 20 distributed, 5 ...
        order = sorted(trials, key=lambda t: (
            trials[t][0]["strategy"] not in paper_cols, -trials[t][0]["budget"],
            paper_cols.index(trials[t][0]["strategy"]) if trials[t][0]["strategy"] in paper_cols else 2, t))
        per_slice = {t: _mean_per_slice([_load_per_slice(i) for i in trials[t]]) for t in order}
        labelled = {t: sorted({z for i in trials[t] for z in i["labelled"]}) for t in order}
        nz = len(next(iter(per_slice.values()))["accuracy"])
        idx = paper_indices(nz)
        seeds = sorted({i["seed"] for t in order for i in trials[t]})
        if preset == "paper" or any(r["schedule"] == "one-shot" for r in finals.values()):
            table = tables.paper_table(per_slice, idx)
            md = tables.paper_table_markdown(table)
            near = tables.index_proximity(labelled, idx, within=_context_reach(spec))
            if near:
                md += "\nWithin the network's 2.5D context of a training slice: " + " ".join(near) + "\n"
            out["index_proximity"] = near
            atomic_write_bytes(study_dir / "paper_table.md", (md + "\n").encode())
            out["paper_table"] = table
            out["paper_indices"] = idx
            over = f" (mean over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
            sections.append((f"Table 1 layout: loss (BCE) and accuracy at Index-{idx[0]}/{idx[1]}/{idx[2]} of {nz}{over}", md))
        lc = {t: colors.get(trials[t][0]["strategy"]) or plots.color_for(t) for t in order}
        plots.plot_slice_metric({k: v["accuracy"] for k, v in per_slice.items()}, plot_dir / "accuracy_along_z.png",
                                labelled=labelled, metric="accuracy", marks=idx, colors=lc)
        sections.append(("Accuracy along z", plot_dir / "accuracy_along_z.png", "labelled slices marked under the axis"))
        first = next(iter(per_slice.values()))
        plots.plot_porosity_profile(first["porosity_true"], {k: v["porosity_pred"] for k, v in per_slice.items()},
                                    plot_dir / "porosity_profile.png", labelled=labelled, marks=idx, colors=lc)
        sections.append(("Porosity per slice vs truth", plot_dir / "porosity_profile.png", ""))
        panel = _prediction_panel({t: min(trials[t], key=lambda i: i["seed"]) for t in order}, spec, idx[-1],
                                  plot_dir / "prediction_panel.png", lc)
        if panel:
            seed_note = ", seed " + str(seeds[0]) if len(seeds) > 1 else ""
            sections.append((f"Predictions at Index-{idx[-1]} (Figure 2 style{seed_note})",
                             panel, "orange: pore called solid; blue: solid called pore"))
    # whole-slice runs have a curve by slices; region runs (tiles) only by cost
    tile_runs = {r["run"] for r in curve_rows if r.get("unit") == "tiles"}
    slice_rows = [r for r in curve_rows if r["run"] not in tile_runs]
    if slice_rows and (any(r["schedule"] == "iterative" for r in slice_rows) or len({r["n_labelled"] for r in slice_rows}) > 1):
        plots.plot_learning_curves(slice_rows, plot_dir / "learning_curves.png", metric="iou_solid", ceiling=ceiling,
                                   fractions=(0.95, 0.99) if ceiling else (), colors=colors)
        sections.append(("Learning curves (solid-phase IoU)", plot_dir / "learning_curves.png", ""))
        plots.plot_correction_cost([r for r in slice_rows if r["correction_cost"] is not None], plot_dir / "correction_cost.png",
                                   colors=colors)
        sections.append(("Correction cost per round", plot_dir / "correction_cost.png",
                         "pixels changed from the pre-filled masks"))
    if any(r["schedule"] == "iterative" for r in curve_rows) or tile_runs:
        for x, fname, what in (("reviewed_slices", "learning_curves_reviewed.png", "reviewed area"),
                               ("changed_cum", "learning_curves_changed.png", "pixels changed")):
            plots.plot_cost_curves(curve_rows, plot_dir / fname, x=x, ceiling=ceiling,
                                   fractions=(0.95, 0.99) if ceiling else (), colors=colors)
            sections.append((f"Learning curves by {what}", plot_dir / fname,
                             "reviewed: the pixels the person verifies (tile or slice, context excluded, audits included), "
                             "in slice-equivalents" if x == "reviewed_slices" else "pixels changed from the pre-fill"))
    if ceiling is not None:
        slice_px = int(np.prod(spec_shape(spec)[1:]))
        area = tables.cost_efficiency(curve_rows, ceiling, x="reviewed_cum")
        md = tables.cost_efficiency_markdown(area, slice_px=slice_px, ceiling=ceiling)
        atomic_write_bytes(study_dir / "reviewed_area.md", (md + "\n").encode())
        out["reviewed_area"] = {g: {"px": {str(f): e[f] for f in (0.95, 0.99)},
                                    "slices": {str(f): None if e[f] is None else e[f] / slice_px for f in (0.95, 0.99)},
                                    "round": {str(f): e["round"][f] for f in (0.95, 0.99)},
                                    "seed_median_px": {str(f): e["seed_median"][f] for f in (0.95, 0.99)},
                                    "max_px": e["max_x"], "max_slices": None if e["max_x"] is None else e["max_x"] / slice_px,
                                    "best": e["best"]} for g, e in area.items()}
        sections.append(("Reviewed area to reach 95 % / 99 % of the all-slices ceiling", md))
    if any(r.get("stop") is not None for r in curve_rows):
        stop = tables.stopping_summary(curve_rows, ceiling)
        md = tables.stopping_markdown(stop)
        atomic_write_bytes(study_dir / "stopping.md", md.encode())
        out["stopping"] = stop
        out["stopping_text"] = md
        sections.append(("The stopping rule against the true learning curve (stop round vs the first round within 1 % "
                         "of the ceiling; interval coverage of the true IoU of the model it estimates)", md))
    if ceiling is not None and slice_rows:
        eff = tables.label_efficiency(slice_rows, ceiling)
        md = tables.label_efficiency_markdown(eff, ceiling=ceiling)
        atomic_write_bytes(study_dir / "label_efficiency.md", (md + "\n").encode())
        out["label_efficiency"] = {k: {str(f): v.get(f) for f in (0.95, 0.99)} for k, v in eff.items()}
        out["ceiling_iou_solid"] = ceiling
        sections.append(("Label efficiency (slices to reach 95 % / 99 % of the all-slices ceiling)", md))
    # results.json holds what the runs computed, not how long they took: identical studies (inline or on a
    # cluster, retried or not) give identical files; the timings stay in results.csv and the report
    atomic_write_json(study_dir / "results.json", {"rows": [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows],
                                                   **{k: v for k, v in out.items() if k != "rows"}})
    attempts = {rd["name"]: a for rd in spec["runs"] if (a := read_attempts(study_dir / "runs" / rd["name"]))}
    atomic_write_json(study_dir / "attempts.json", {"runs": attempts})
    out["attempts"] = {name: len(a) for name, a in attempts.items()}
    intro = f"{len(finals)} runs on `{spec['inputs']['image']}`."
    if unfinished:
        intro += f" Not finished (left out of the per-slice figures): {', '.join(unfinished)}."
    retried = {name: n for name, n in out["attempts"].items() if n > 1}
    if retried:
        intro += (" Run again after a lost worker or an interrupted study (attempts, each resuming from the run's "
                  "session; see attempts.json): " + ", ".join(f"{name} ({n})" for name, n in sorted(retried.items())) + ".")
    out["unfinished"] = unfinished
    report.write_report_md(study_dir / "report.md", title=title, sections=sections, intro=intro)
    out["report"] = str(study_dir / "report.md")
    return out


def spec_shape(spec: dict) -> tuple[int, ...]:
    """Shape (Z, Y, X) of a study's stack (from its inputs, read lazily)."""
    with io.open_stack(spec["inputs"]["image"]) as image:
        return tuple(int(v) for v in image.shape)


def _prediction_panel(trials: dict, spec: dict, z: int, path: Path, colors: dict) -> Path | None:
    """Each trial's final prediction of slice ``z``: the current model of one of its runs
    (the network the gate accepted last, or the Random Forest), as its tables report it."""
    inputs = spec["inputs"]
    with io.open_stack(inputs["image"]) as image, io.open_stack(inputs["truth"]) as truth:
        preds = {}
        for trial, info in trials.items():
            run = loop.open_session(Path(info["run_dir"]), check_inputs=False)
            _, _, model = loop.current_model(run, image)
            preds[trial] = model.predict_proba(image, [z])[0, 1]
        if not preds:
            return None
        return plots.plot_prediction_panel(
            np.asarray(image[z]), np.asarray(truth[z]), preds, path, z=z, colors=colors
        )
