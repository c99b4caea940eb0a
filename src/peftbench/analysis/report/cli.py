"""The ``report``, ``claims`` and ``recommend`` sub-commands, for ``peftbench.cli`` to mount.

Bad input raises ``peftbench.errors.UserError``; the main CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report``, ``claims`` and ``recommend``; each sets ``func(args) -> exit code``."""
    report = subparsers.add_parser(
        "report",
        help="tables, figures and an HTML page from one or more results directories",
        description="Write Tables 1-6 (Markdown, CSV, LaTeX), Figure 1, validation-loss curves, trade-off plots "
        "and a self-contained index.html from the result files in RESULTS_DIR (several directories are read "
        "as one set: a sweep continued elsewhere, or run on two machines).",
    )
    report.add_argument("results_dirs", type=Path, nargs="+", metavar="RESULTS_DIR")
    report.add_argument(
        "--out", type=Path, default=None, metavar="DIR",
        help="output directory (default: the first RESULTS_DIR/report)",
    )
    report.set_defaults(func=run_report)

    claims = subparsers.add_parser(
        "claims",
        help="check the paper's findings on results: holds, does not hold or inconclusive",
        description="Each of Pu et al. (2023)'s findings as a check on the result files in RESULTS_DIR (several "
        "directories are read as one set), with the numbers on both sides of every comparison.",
    )
    claims.add_argument("results_dirs", type=Path, nargs="+", metavar="RESULTS_DIR")
    claims.add_argument("--json", action="store_true",
                        help="print the verdicts as JSON: each claim with every comparison's cells, paired "
                        "difference, interval, p-values and the seeds it would need")
    claims.set_defaults(func=run_claims)

    recommend = subparsers.add_parser(
        "recommend",
        help="rank fine-tuning methods for a task type, data size and constraint",
        description="Without --results: the decision framework of Pu et al. (2023) §3.2. With --results: the "
        "same question answered from measured numbers at the closest data scale.",
    )
    recommend.add_argument("--task-type", required=True, metavar="classification|generation")
    recommend.add_argument(
        "--examples", required=True, type=int, metavar="N", help="training examples available"
    )
    recommend.add_argument(
        "--constraint",
        required=True,
        metavar="time|memory|performance",
        help="what matters most: training time, memory, or task performance",
    )
    recommend.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="RESULTS_DIR",
        help="answer from these measured results instead of the paper's framework",
    )
    recommend.set_defaults(func=run_recommend)


def run_report(args: argparse.Namespace) -> int:
    from peftbench.analysis.report import build_report

    dirs = args.results_dirs
    written = build_report(dirs[0] if len(dirs) == 1 else dirs, args.out)
    for kind, paths in written.items():
        print(
            f"{kind}: {len(paths)} file(s) in {sorted({str(p.parent) for p in paths})[0] if paths else '-'}"
        )
    print(f"open {written['html'][0]}")
    return 0


def run_claims(args: argparse.Namespace) -> int:
    from peftbench.analysis.report.claims import check_claims, collect_many, format_text, verdicts_json

    verdicts = check_claims(collect_many(args.results_dirs))
    print(json.dumps(verdicts_json(verdicts), indent=1, allow_nan=False, ensure_ascii=False) if args.json else format_text(verdicts))
    return 0


def run_recommend(args: argparse.Namespace) -> int:
    from peftbench.analysis.recommend import format_recommendations, recommend

    recommendations = recommend(args.task_type, args.examples, args.constraint, args.results)
    print(format_recommendations(recommendations))
    return 0
