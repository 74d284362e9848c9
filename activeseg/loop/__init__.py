"""The active-learning loop over a session directory: the public face of the round steps.

One room per concern (docs/architecture.md §2):

- :mod:`activeseg.loop.state`: what a session holds (inputs, config, rng, labels and
  tombstones, the current model), read from its committed manifest;
- :mod:`activeseg.loop.steps`: the steps ``init_session``, ``bootstrap``, ``query``,
  ``import_corrections``, ``revert``, ``oracle_correct``, ``pseudo_label``, ``train``;
- :mod:`activeseg.loop.evaluate`: whole-stack prediction and evaluation against the truth;
- :mod:`activeseg.loop.export`: ``export_segmentation`` and ``predict_to_file``;
- :mod:`activeseg.loop.status`: ``status`` and ``next_step``;
- :mod:`activeseg.loop.simulate`: the one simulation driver (``run`` and studies).

Callers write ``from activeseg import loop; loop.query(session, 4)``.
"""

from activeseg.config import SessionConfig, load_config, validate_config
from activeseg.loop.evaluate import evaluate_model
from activeseg.loop.export import check_output_values, export_segmentation, predict_to_file
from activeseg.loop.simulate import bootstrap_slices, run, run_rounds
from activeseg.loop.state import (
    LABEL_KINDS,
    Progress,
    current_model,
    labelled_slices,
    labels_dict,
    open_session,
    pending_regions,
    pending_slices,
    prefill_regions,
    relink,
    session_grid,
    tile_labelled,
)
from activeseg.loop.status import next_step, status
from activeseg.loop.steps import (
    bootstrap,
    import_corrections,
    init_session,
    oracle_correct,
    pseudo_label,
    query,
    revert,
    train,
)

__all__ = [
    "LABEL_KINDS",
    "Progress",
    "SessionConfig",
    "bootstrap",
    "bootstrap_slices",
    "check_output_values",
    "current_model",
    "evaluate_model",
    "export_segmentation",
    "import_corrections",
    "init_session",
    "labelled_slices",
    "labels_dict",
    "load_config",
    "next_step",
    "open_session",
    "oracle_correct",
    "pending_regions",
    "pending_slices",
    "prefill_regions",
    "predict_to_file",
    "pseudo_label",
    "query",
    "relink",
    "revert",
    "run",
    "run_rounds",
    "session_grid",
    "status",
    "tile_labelled",
    "train",
    "validate_config",
]
