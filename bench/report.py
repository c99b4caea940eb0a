"""The comparison table: per cell and side, medians over seeds and repeats; ratios are trainer / peftbench."""

from __future__ import annotations

import statistics


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def side_summary(runs: list[dict], peak_bf16: float) -> dict | None:
    runs = [r for r in runs if not r.get("failed")]
    if not runs:
        return None
    tokens_per_s = [r["train_tokens"] / r["train_s"] for r in runs if r["train_s"]]
    flops_per_s = [r["train_flops"] / r["train_s"] for r in runs if r["train_s"]]
    return {
        "runs": len(runs), "time_to_result_s": _median([r["time_to_result_s"] for r in runs]),
        "process_wall_s": _median([r["process_wall_s"] for r in runs]),
        "train_s": _median([r["train_s"] for r in runs]), "eval_s": _median([r["eval_s"] for r in runs]),
        "train_tokens_per_s": _median(tokens_per_s),
        "mfu_bf16": _median(flops_per_s) / peak_bf16 if flops_per_s else None,
        "epochs": [r["epochs"] for r in runs], "score": _median([r["score"] for r in runs]),
        "scores": [r["score"] for r in runs],
        "metric": runs[0]["metric"], "trainable_params": runs[0]["trainable_params"],
        "load_before": [r["load_before"][0] for r in runs],
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


def _ratios(ours: dict, theirs: dict) -> dict:
    """Trainer ÷ peftbench for times, peftbench ÷ trainer for tokens/s: above 1, peftbench is faster."""
    return {"time_to_result": _ratio(theirs["time_to_result_s"], ours["time_to_result_s"]),
            "train_tokens_per_s": _ratio(ours["train_tokens_per_s"], theirs["train_tokens_per_s"]),
            "eval_s": _ratio(theirs["eval_s"], ours["eval_s"])}


def summarise(records: list[dict], peaks: dict, names: list[str]) -> dict:
    peak = max(peaks["before"]["bf16"]["flops_per_s"], peaks["after"]["bf16"]["flops_per_s"])
    cells = {}
    for name in names:
        names_of_sides = list(dict.fromkeys(r["side"] for r in records if r["cell"] == name))
        runs = {side: [r for r in records if r["cell"] == name and r["side"] == side] for side in names_of_sides}
        sides = {side: side_summary(side_runs, peak) for side, side_runs in runs.items()}  # None: all failed
        theirs = sides.get("trainer")
        ratios = {side: _ratios(ours, theirs) for side, ours in sides.items()
                  if side.startswith("peftbench") and ours and theirs}
        cells[name] = {"sides": sides, "ratios": ratios}
    return cells


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _scores(side: dict) -> str:
    """The median score; with several runs (seeds), each run's score after it."""
    text = f"{side['score']:.4f} {side['metric']}"
    return text if len(side["scores"]) == 1 else f"{text} ({', '.join(f'{v:.2f}' for v in side['scores'])})"


def markdown_table(summary: dict, meta: dict) -> str:
    peaks = meta["peaks"]
    lines = [
        f"`{meta['command']}` — {meta['device']}, {meta['torch_threads']} torch threads, "
        f"OpenMP {meta['omp']} (trainer side: {meta['omp']['trainer']})",
        "",
        "GEMM peak (GFLOP/s, before / after the cells): "
        f"fp32 {peaks['before']['fp32']['flops_per_s'] / 1e9:.0f} / {peaks['after']['fp32']['flops_per_s'] / 1e9:.0f}, "
        f"bf16 {peaks['before']['bf16']['flops_per_s'] / 1e9:.0f} / {peaks['after']['bf16']['flops_per_s'] / 1e9:.0f}"
        " (MFU uses the higher bf16 figure)",
        "",
        "| cell | side | time to result s | × | train s | train tok/s | × | test decode s | × | MFU % bf16 "
        "| epochs | score | load |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for name, cell in summary.items():
        for side, s in cell["sides"].items():  # a side not asked for (--sides) has no row
            if s is None:
                lines.append(f"| {name} | {side} | failed | | | | | | | | | | |")
                continue
            r = cell["ratios"].get(side, {})
            lines.append(
                f"| {name} | {side} | {_fmt(s['time_to_result_s'], '.1f')} | {_fmt(r.get('time_to_result'), '.2f')} "
                f"| {_fmt(s['train_s'], '.1f')} | {_fmt(s['train_tokens_per_s'], '.0f')} "
                f"| {_fmt(r.get('train_tokens_per_s'), '.2f')} | {_fmt(s['eval_s'], '.1f')} "
                f"| {_fmt(r.get('eval_s'), '.2f')} | {_fmt(s['mfu_bf16'] and 100 * s['mfu_bf16'], '.1f')} "
                f"| {','.join(map(str, s['epochs']))} | {_scores(s)} "
                f"| {','.join(map(str, s['load_before']))} |")
    lines += ["", "× = trainer / peftbench (time) or peftbench / trainer (tokens/s): above 1, peftbench is faster."]
    return "\n".join(lines)
