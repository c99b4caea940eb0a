"""The learning-rate search: which of a run's candidate learning rates it trains and tests (``sweep.execute_run``
asks before it runs the recipe).

The paper uses one fixed learning-rate triple per method family (§A.3), tuned for FLAN-T5. Whether a method
loses because it is worse or because its learning rate does not suit the model cannot be told from one
rate. With ``lr_search=[0.1, 0.3, 1, 3]`` each factor scales the method's triple (initial, peak, final
together) in a candidate run that trains and validates like any run but is never tested
(``RunConfig.lr_candidates``; the sweep runs the candidates first, each resumable and skippable). The run
then trains the factor whose best validation loss is lowest, the quantity early stopping already
minimises, and tests it; the test split is never looked at to choose. A candidate that diverged counts as
an infinite loss; one that failed stops the run with the reason. Ties go to the factor listed first.

The chosen run trains again from the same seed rather than reloading the candidate's weights (candidates
keep none): the training is the same computation, and the cost is one more training of one factor.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig
from peftbench.errors import UserError
from peftbench.running import results

CRITERION = "lowest best validation loss (mean cross-entropy per target token)"


def chosen_run(run: RunConfig, search: dict[str, Any]) -> RunConfig:
    """What the run trains and tests: its config with the chosen factor (and no search left to do)."""
    return replace(run, lr_search=None, train=replace(run.train, lr_scale=search["chosen"]))


def choose(run: RunConfig, results_dir: Path) -> dict[str, Any]:
    """The result's ``lr_search``: every candidate's factor, learning rates, validation curve and best
    validation loss, and the ``chosen`` factor. UserError when a candidate has no usable result."""
    candidates = [_candidate(candidate, Path(results_dir)) for candidate in run.lr_candidates()]
    chosen = min(candidates, key=_loss)  # min keeps the first of equals
    if not math.isfinite(_loss(chosen)):
        raise UserError(f"lr_search: every candidate of {run.run_id()} diverged "
                        f"(factors {', '.join(str(c['factor']) for c in candidates)})")
    return {"candidates": candidates, "chosen": chosen["factor"], "criterion": CRITERION}


def _candidate(candidate: RunConfig, results_dir: Path) -> dict[str, Any]:
    factor, run_id = candidate.train.lr_scale, candidate.run_id()
    status = results.load_status(results_dir, run_id)
    if status not in ("ok", "diverged"):
        what = f"has status {status}" if status else "is not run"
        raise UserError(f"lr_search: candidate lr×{factor} ({run_id}) {what}; the sweep runs candidates before "
                        f"the run that reads them (with executor=ray, run the sweep again once they are done)")
    result = results.read_result(results.result_path(results_dir, run_id))
    curve = [epoch["val_loss"] for epoch in result.get("history") or []]
    finite = [loss for loss in curve if loss is not None and math.isfinite(loss)]
    best = min(finite) if status == "ok" and finite else math.inf
    optimizer = result.get("optimizer") or {}
    return {"factor": factor, "run_id": run_id, "status": status, "lr_peak": optimizer.get("lr_peak"),
            "best_epoch": result.get("best_epoch"), "val_loss": curve,
            "best_val_loss": best if math.isfinite(best) else None}


def _loss(candidate: dict[str, Any]) -> float:
    """A candidate's best validation loss; a diverged one's is infinite."""
    return math.inf if candidate["best_val_loss"] is None else candidate["best_val_loss"]
