"""Checks a sweep before any training: names exist, selections parse, models are safe to load, every data
file reads, and the results directory is one.

Bad input fails here, in seconds and before any result is written, as a ``UserError`` naming the problem
and where it is. What is merely surprising (a scale larger than the data) comes back as a note; the same
note is recorded in each affected result (``data.note``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from peftbench.config import SweepConfig
from peftbench.errors import UserError

# Far more blocks than any model has: layer selections are checked for form here, for range at run time.
_ANY_DEPTH = {"stack": 1_000_000}


def check_sweep(sweep: SweepConfig) -> list[str]:
    """Raise UserError on the first bad input of ``sweep``; return notes worth telling the user."""
    check_names(sweep)
    check_selection(sweep)
    check_models(sweep)
    notes = check_data(sweep)
    check_results_dir(sweep.results_dir)
    return notes


def check_names(sweep: SweepConfig) -> None:
    """Every model, method, task, scale and ablation of the grid exists."""
    from peftbench.ablations import ABLATIONS
    from peftbench.methods import get_method
    from peftbench.models import resolve_source
    from peftbench.tasks import get_task
    from peftbench.tasks.data import scale_cap_and_epochs

    for model in sweep.models:
        resolve_source(model)
    for method in sweep.methods:
        get_method(method)
    for task in sweep.tasks:
        get_task(task)
    for scale in sweep.scales:
        scale_cap_and_epochs(scale)
    for ablation in sweep.ablations:
        if ablation is not None:
            ABLATIONS.get(ablation)


def check_selection(sweep: SweepConfig) -> None:
    """``layers``/``modules`` parse, do not clash with a named ablation, and suit every method."""
    from peftbench.ablations import resolve_selection
    from peftbench.methods import get_method
    from peftbench.methods.roles import parse_module_filter, select_layers

    parse_module_filter(sweep.modules)
    select_layers(_ANY_DEPTH, sweep.layers, seed=0)
    for method in sweep.methods:
        for ablation in sweep.ablations_for(method):
            layers, modules = resolve_selection(ablation, sweep.layers, sweep.modules)
            if not get_method(method).selectable and (layers is not None or modules):
                raise UserError(f"method {method} adapts no per-layer modules: "
                                f"{ablation or 'layers=/modules='} does not apply to it")


def check_models(sweep: SweepConfig) -> None:
    """A local model directory that ships its own code runs only with ``trust_remote_code: true``."""
    from peftbench.models import resolve_source

    for model in sweep.models:
        source = Path(resolve_source(model).source)
        config_file = source / "config.json"
        if sweep.trust_remote_code or not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_file}: not readable as JSON ({exc})") from None
        if isinstance(config, dict) and config.get("auto_map"):
            raise UserError(f"model {model}: {config_file} names its own code (auto_map), which peftbench runs "
                            f"only with trust_remote_code: true")


def check_data(sweep: SweepConfig) -> list[str]:
    """Read every task's data once, as the runs will (file, line, field and label errors surface here);
    returns a note for each scale that asks for more training examples than the data has."""
    from peftbench.tasks import get_task
    from peftbench.tasks.data import load_task_data, scale_cap_and_epochs

    notes = []
    for name in sweep.tasks:
        task = get_task(name)
        data = load_task_data(task, sweep.data_dir, sweep.scales[0], sweep.seeds[0], sweep.train.eval_examples)
        available = data.info["available_train_examples"]
        for scale in sweep.scales:
            cap, _ = scale_cap_and_epochs(scale)
            if cap > available:
                notes.append(f"task {task.name}: scale {scale} asks for {cap} training examples but the data has "
                             f"{available}; all {available} are used (recorded as data.note in each result)")
    return notes


def check_results_dir(results_dir: Path) -> None:
    """The results directory is a writable directory (created when absent)."""
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise UserError(f"output_dir {results_dir} exists and is not a directory")
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"output_dir {results_dir}: a parent of it is a file, not a directory") from None
    except OSError as exc:
        raise UserError(f"output_dir {results_dir}: cannot create it ({exc.strerror})") from None
    if not os.access(results_dir, os.W_OK | os.X_OK):
        raise UserError(f"output_dir {results_dir} is not writable")
