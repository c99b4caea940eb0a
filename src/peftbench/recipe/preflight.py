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
    notes = check_models(sweep)
    check_architectures(sweep)
    check_methods(sweep)
    notes += check_data(sweep)
    check_results_dir(sweep.results_dir)
    return notes + [reason for _, reason in sweep.not_applicable()]


def check_names(sweep: SweepConfig) -> None:
    """Every model, method, task, scale, ablation and tracker of the grid exists (trackers: and is installed)."""
    from peftbench.catalog.ablations import ABLATIONS
    from peftbench.catalog.methods import get_method
    from peftbench.catalog.models import resolve_source
    from peftbench.catalog.tasks import get_task
    from peftbench.catalog.tasks.data import scale_cap_and_epochs
    from peftbench.running.tracking import check_trackers

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
    check_trackers(sweep.trackers)


def check_selection(sweep: SweepConfig) -> None:
    """``layers``/``modules`` parse, do not clash with a named ablation, and suit every method."""
    from peftbench.catalog.ablations import resolve_selection
    from peftbench.catalog.methods import get_method
    from peftbench.catalog.methods.roles import parse_module_filter, select_layers

    parse_module_filter(sweep.modules)
    select_layers(_ANY_DEPTH, sweep.layers, seed=0)
    for method in sweep.methods:
        for ablation in sweep.ablations_for(method):
            layers, modules = resolve_selection(ablation, sweep.layers, sweep.modules)
            if not get_method(method).selectable and (layers is not None or modules):
                raise UserError(f"method {method} adapts no per-layer modules: "
                                f"{ablation or 'layers=/modules='} does not apply to it")


def check_models(sweep: SweepConfig) -> list[str]:
    """Code a local model directory ships (``auto_map``) runs only with ``trust_remote_code: true``.

    Without it, a model of an architecture transformers knows loads with the built-in class (a note says
    so); any other is refused.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from peftbench.catalog.models import resolve_source

    notes = []
    for model in sweep.models:
        config_file = Path(resolve_source(model).source) / "config.json"
        if sweep.trust_remote_code or not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_file}: not readable as JSON ({exc})") from None
        if not isinstance(config, dict) or not config.get("auto_map"):
            continue
        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise UserError(f"model {model}: {config_file} needs its own code (auto_map, model_type "
                            f"{model_type!r}), which peftbench runs only with trust_remote_code: true")
        notes.append(f"model {model}: the code named by auto_map in {config_file} is not run "
                     f"(trust_remote_code is off); the built-in {model_type} class is used")
    return notes


def check_architectures(sweep: SweepConfig) -> None:
    """An encoder-only model (BERT, RoBERTa, ...) classifies with a head over the label words and cannot
    write text: a generation task on one is refused, and so are the reference rows that run the untuned
    model (its head is untrained)."""
    from peftbench.catalog.models import family_of, load_config
    from peftbench.catalog.tasks import get_task

    generation = [t for t in sweep.tasks if get_task(t).type != "classification"]
    untuned = [m for m in sweep.methods if m in ("zero_shot", "in_context")]
    for model in sweep.models:
        try:
            config = load_config(model, sweep.trust_remote_code)
        except (OSError, ValueError):
            continue  # check_methods names the problem
        if generation and family_of(config) == "encoder":
            raise UserError(f"model {model}: {config.model_type} is an encoder-only classifier; it cannot "
                            f"generate text for task {generation[0]} (encoder models run classification tasks)")
        if untuned and family_of(config) == "encoder":
            raise UserError(f"model {model}: method {untuned[0]} runs the untuned model, whose classification "
                            f"head an encoder-only model has not trained (use majority as its reference)")


def check_methods(sweep: SweepConfig) -> None:
    """Apply every (model, method, ablation) of the grid to the model built on the meta device (no weights,
    well under a second each): method options, layer indices and module selections fail here, not mid-sweep."""
    from peftbench.catalog.methods import get_method
    from peftbench.catalog.methods.reference import reference_options
    from peftbench.catalog.params import count_params

    for model in sweep.models:
        for method in sweep.methods:
            if get_method(method).is_reference:  # nothing to apply; its options are checked here
                reference_options(method, sweep.method_options.get(method, {}))
                continue
            for ablation in sweep.ablations_for(method):
                cell = f"model {model}, method {method}" + (f", ablation {ablation}" if ablation else "")
                try:
                    count_params(model, method, ablation, sweep.layers, sweep.modules,
                                 sweep.method_options.get(method, {}), seed=sweep.seeds[0],
                                 revision=sweep.model_revision)
                except UserError as exc:
                    raise UserError(f"{cell}: {exc}") from None
                except (OSError, ValueError) as exc:  # a hub id offline or unknown, a config it cannot read
                    raise UserError(f"{cell}: cannot build the model from its config "
                                    f"({type(exc).__name__}: {_first_line(exc)})") from None
                except Exception as exc:  # noqa: BLE001 - the method cannot be applied: refuse before training
                    raise UserError(f"{cell}: cannot apply the method to the model "
                                    f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def check_data(sweep: SweepConfig) -> list[str]:
    """Read every task's data once, as the runs will (file, line, field and label errors surface here);
    returns a note for each scale that asks for more training examples than the data has."""
    from peftbench.catalog.tasks import get_task
    from peftbench.catalog.tasks.data import load_task_data, scale_cap_and_epochs

    notes = []
    for name in sweep.tasks:
        task = get_task(name)
        data = load_task_data(task, sweep.data_dir, sweep.scales[0], sweep.seeds[0], sweep.train.eval_examples,
                              sweep.train.test_examples)
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
