"""Command line: each command maps to one function; bad input ends with one line and exit status 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from peftbench import limit_openmp_spinning
from peftbench.errors import UserError, did_you_mean, unknown
from peftbench.running.redaction import redact

SUITES_DIR = Path(__file__).parent / "suites"


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def resolve_config_path(name: str | None) -> Path:
    """A YAML path, or the name of a shipped suite (``paper``, ``quickstart``, ...)."""
    if name is None:
        return SUITES_DIR / "quickstart.yaml"
    if (SUITES_DIR / f"{name}.yaml").is_file():
        return SUITES_DIR / f"{name}.yaml"
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        return path
    raise unknown("suite", name, suite_names())


def cmd_run(args: argparse.Namespace) -> int:
    from peftbench.config import load_sweep
    from peftbench.recipe.preflight import check_sweep
    from peftbench.running.distributed import check_launch, is_main_process
    from peftbench.running.progress import sweep_title
    from peftbench.running.summary import failure_lines, results_table
    from peftbench.running.sweep import run_sweep

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # `peftbench run key=value ...`: the defaults (the paper's
        config, overrides = None, [config, *overrides]  # protocol) plus the overrides, no suite
        sweep = load_sweep(None, overrides)
    else:  # a suite or YAML file; no arguments at all is the embedded quickstart
        sweep = load_sweep(resolve_config_path(config), overrides)
    if args.retry_failed:
        sweep.retry_failed = True
    check_launch(sweep)  # a multi-process launch peftbench cannot serve fails before any work
    # Launched as several processes (accelerate launch, torchrun), the main one alone reports.
    say = print if is_main_process() else (lambda *_args, **_kwargs: None)
    for note in check_sweep(sweep):
        say(redact(f"peftbench: note: {note}"), file=sys.stderr)
    if args.dry_run:
        from peftbench.running.dryrun import dry_run_report

        say(redact(dry_run_report(sweep)))
        return 0
    runs = sweep.expand()
    say(redact(f"{sweep_title(sweep.name)}: {len(runs)} run(s) → {sweep.results_dir}"), file=sys.stderr)
    if sweep.executor == "ray":
        from peftbench.running.executors import run_sweep_ray

        outcome = run_sweep_ray(sweep, progress=not args.quiet)
    else:
        outcome = run_sweep(sweep, progress=not args.quiet)
    say(redact(results_table(runs, sweep.results_dir)))
    for line in failure_lines(outcome, sweep.results_dir):  # why each run is not ok, one line each
        say(redact(line), file=sys.stderr)
    say(redact(f"\n{len(outcome.ran)} ran, {len(outcome.skipped)} already done, {len(outcome.failed)} not ok, "
               f"{len(outcome.locked)} held by another process; results in {sweep.results_dir}"), file=sys.stderr)
    if outcome.stopped:  # the results folder took no writes at all
        say(redact(f"peftbench: error: {outcome.stopped}"), file=sys.stderr)
    return 1 if outcome.failed or outcome.stopped else 0


def cmd_list(args: argparse.Namespace) -> int:
    from peftbench.catalog.ablations import ABLATIONS
    from peftbench.catalog.methods import METHODS
    from peftbench.catalog.models import MODELS
    from peftbench.catalog.tasks import TASKS

    if args.what == "methods":
        for name in METHODS:
            spec = METHODS.get(name)
            lr = f" (lr {spec.lr.initial:g} → {spec.lr.peak:g} → {spec.lr.final:g})" if spec.lr else ""
            print(f"{name:10} {spec.description}{lr}")
        print("any other PEFT method by its PEFT name, e.g. method=loha method_options=...")
    elif args.what == "tasks":
        for name in TASKS:
            task = TASKS.get(name)
            print(f"{name:26} {task.type:14} {task.metric:9} v{task.version}")
    elif args.what == "models":
        for name in MODELS:
            spec = MODELS.get(name)
            print(f"{name:18} {spec.source:38} {spec.description}")
    elif args.what == "ablations":
        for name in ABLATIONS:
            print(f"{name:22} {ABLATIONS.get(name).description}")
    else:
        for name in suite_names():
            print(name)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (a UserError, exit 2) and "did you mean" for a mistyped choice."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)} (choose from {choices})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftbench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep (default: the embedded quickstart)")
    run.add_argument("config", nargs="?", help="a suite name (see `list suites`) or a YAML file")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. methods=[lora] train.max_epochs=2")
    run.add_argument("--retry-failed", action="store_true", help="re-run failed and diverged runs too")
    run.add_argument("--dry-run", action="store_true",
                     help="print the grid, which runs are done, a time estimate from earlier results and each run's "
                          "predicted memory peak and breakdown; run nothing")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output (bars or per-epoch lines)")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list registered methods, tasks, models, ablations or suites")
    lst.add_argument("what", choices=["methods", "tasks", "models", "ablations", "suites"])
    lst.set_defaults(func=cmd_list)

    for module, commands in COMMAND_MODULES.items():
        try:
            add_commands = __import__(module, fromlist=["add_commands"]).add_commands
        except ImportError as exc:  # a broken install: the commands stay, and say why they cannot run
            for command in commands:
                _add_unavailable(sub, command, module, exc)
            continue
        add_commands(sub)
    return parser


COMMAND_MODULES = {
    "peftbench.catalog.params_command": ("params",),
    "peftbench.analysis.report.cli": ("report", "claims", "recommend"),
    "peftbench.analysis.export": ("export",),
    "peftbench.running.serve_bench": ("serve-bench",),
    "peftbench.analysis.decide": ("decide",),
    "peftbench.analysis.compare": ("compare",),
}
"""The modules that add commands of their own (``add_commands(subparsers)``), and the commands each adds."""


def _add_unavailable(sub, command: str, module: str, exc: ImportError) -> None:
    """``command``, whose module failed to import: running it is a one-line error naming the failed import."""
    def refuse(_args: argparse.Namespace) -> int:
        raise UserError(f"`peftbench {command}` is unavailable: importing {module} failed: {exc} "
                        f"(reinstall peftbench: pip install -e .)")

    parser = sub.add_parser(command, help=f"unavailable: importing {module} failed ({exc})")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=refuse)


def _quiet_libraries() -> None:
    """Library chatter (deprecation notes, HTTP retries) hides our progress bars and messages."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"peftbench\.")  # ours stay visible: skipped results, notes
    warnings.showwarning = _show_warning
    for name in ("transformers", "peft", "accelerate", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """One line per warning, like errors (no source line, no file position of ours)."""
    print(f"peftbench: warning: {redact(str(message))}", file=sys.stderr)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a flag allowed among ``run``'s overrides (``run SUITE --dry-run key=value``):
    argparse closes the positional list at the first flag, so what follows it joins the overrides here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    limit_openmp_spinning()  # before anything imports torch; the worker processes inherit it
    try:
        args = parse_arguments(argv)
        if not args.verbose:
            _quiet_libraries()
            from peftbench.running.isolation import WORKER_SETUP

            if _quiet_libraries not in WORKER_SETUP:  # each run's worker process quiets them too
                WORKER_SETUP.append(_quiet_libraries)
        return args.func(args)
    except UserError as exc:
        print(f"peftbench: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
