"""The one simulation driver: rounds of query -> ground-truth oracle (or pseudo-labels) -> train.

Used by ``activeseg run`` (:func:`run`), by studies (:func:`activeseg.study.execute_run`)
and so by the demo. It resumes a session wherever it stopped: a round already trained is
skipped, a queried round is corrected and trained.
"""

from __future__ import annotations

from collections.abc import Sequence

from activeseg.errors import SessionError
from activeseg.loop.state import Progress, no_progress, waiting
from activeseg.loop.steps import bootstrap, oracle_correct, pseudo_label, query, train
from activeseg.session import Session


def bootstrap_slices(n_slices: int, count: int = 3) -> list[int]:
    """The ``count`` evenly spaced slices a simulation bootstraps on: ``int((i + 0.5) * Z / count)``."""
    return [int((i + 0.5) * n_slices / count) for i in range(count)]


Round = tuple[str, dict | None, int]
"""One planned round: ``(strategy, params, slices)``."""


def run_rounds(
    session: Session,
    plan: Sequence[Round],
    *,
    human: str = "truth",
    bootstrap_count: int = 3,
    effort: int | None = None,
    steps: int | None = None,
    audit: bool = False,
    progress: Progress = no_progress,
) -> list[dict]:
    """Play the rounds of ``plan`` on a session with ground truth; returns the trainings run.

    Bootstraps first, when the session is not bootstrapped yet (RF on simulated scribbles
    of :func:`bootstrap_slices`). Round ``i`` of the plan is round ``i + 1`` of the
    session: a trained one is skipped, a missing one is queried, a queried one is
    corrected (``human="truth"``: the ground-truth oracle; ``"none"``: the current
    model's confident pseudo-labels) and trained. So a killed run resumes where it
    stopped, and running a finished plan again does nothing. ``audit``: every query adds
    its audit (``query --audit``; corrected perfectly), so the stopping rule can be replayed.
    """
    if human not in ("truth", "none"):
        raise SessionError(f"human must be 'truth' (ground-truth oracle) or 'none' (pseudo-labels), got {human!r}")
    m = session.manifest
    if not m.get("truth"):
        raise SessionError("a simulation needs ground truth (init the session with --truth, or from a synth folder)")
    if not m["rounds"]:
        zs = bootstrap_slices(int(m["stack"]["shape"][0]), bootstrap_count)
        bootstrap(session, slices=zs, simulate_scribbles=True, progress=progress)
    done = []
    for i, (strategy, params, size) in enumerate(plan):
        rounds = [r for r in session.manifest["rounds"] if r["index"] > 0]
        if len(rounds) > i and rounds[i].get("status") == "trained":
            continue
        if len(rounds) <= i:
            query(session, size, strategy=strategy, params=params, audit=audit, export=False, progress=progress)
        if waiting(session.manifest["rounds"][-1]):
            if human == "none":
                pseudo_label(session, progress=progress)
            else:
                oracle_correct(session, effort=effort)
        done.append(train(session, steps=steps, progress=progress))
    return done


def run(
    session: Session,
    *,
    strategy: str,
    n: int,
    rounds: int,
    first_strategy: str | None = None,
    params: dict | None = None,
    bootstrap_slices: int = 3,
    effort: int | None = None,
    steps: int | None = None,
    progress: Progress = no_progress,
) -> list[dict]:
    """Simulation (``activeseg run``): ``rounds`` rounds of ``n`` slices, query -> oracle -> train.

    ``first_strategy`` picks the first round (e.g. "distributed"); ``params`` go to
    ``strategy``. A resumed run continues to ``rounds`` in all.
    """
    plan = [((first_strategy if i == 0 and first_strategy else strategy),
             (None if i == 0 and first_strategy and first_strategy != strategy else params), n) for i in range(rounds)]
    return run_rounds(session, plan, bootstrap_count=bootstrap_slices, effort=effort, steps=steps, progress=progress)
