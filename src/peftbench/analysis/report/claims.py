"""The paper's findings as checks on a set of results: each answers ``holds``, ``does not hold`` or
``inconclusive``, quoting our numbers on both sides of every comparison it makes.

A claim compares cells two by two (e.g. full tuning's best epoch against LoRA's, on one task and scale).
A comparison holds or fails only when both cells have several ok seeds and their 95% intervals do not
overlap; otherwise (one seed, or overlapping intervals) it is inconclusive. A claim does not hold when any
of its comparisons fails, holds when all of them hold, and is inconclusive otherwise, or when the
results have no cells to compare. Reference rows (majority, zero_shot, in_context) are never a side of
a comparison; ablations only of the ablation claim.

    peftbench claims results/findings-smollm2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path

from peftbench.analysis.report import collect as c
from peftbench.analysis.report.collect import Collection, Quantity, Stat
from peftbench.analysis.report.references import reference_methods

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
PEFT_METHODS_ORDER = ("ia3", "lora", "bitfit", "prompt")


@dataclass
class Comparison:
    where: str
    """The cell coordinates both sides share, e.g. "smollm2-135m-q4, cola, low"."""
    text: str
    """Both sides' numbers, e.g. "full 2.0 ± 0.0 < lora 5.0 ± 1.2"."""
    verdict: str


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    """Where the paper says it."""
    paper: str
    """The paper's own numbers for it (FLAN-T5-XL)."""
    compare: Callable[[Collection], list[Comparison]]


@dataclass
class Verdict:
    claim: Claim
    verdict: str
    comparisons: list[Comparison]


# ---- comparing two cells ----------------------------------------------------------------------------


def compare(a: Stat, b: Stat, a_lower: bool) -> str:
    """Whether ``a`` is below ``b`` (``a_lower``) or above it: holds / does not hold when both have several
    seeds and their 95% intervals are apart, else inconclusive."""
    if a.n < 2 or b.n < 2 or a.half_width is None or b.half_width is None:
        return INCONCLUSIVE
    if a.mean - a.half_width <= b.mean + b.half_width and b.mean - b.half_width <= a.mean + a.half_width:
        return INCONCLUSIVE
    return HOLDS if (a.mean < b.mean) == a_lower else FAILS


def combine(verdicts: list[str]) -> str:
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


def fmt(stat: Stat, digits: int = 4, scale: float = 1.0) -> str:
    seeds = "1 seed" if stat.n == 1 else f"{stat.n} seeds"
    half = "" if stat.half_width is None else f" ± {stat.half_width * scale:.{digits}f}"
    return f"{stat.mean * scale:.{digits}f}{half} ({seeds})"


def ratio(a: Stat, b: Stat) -> Stat:
    """a / b with the 95% half-width propagated from both (first order), as Figure 1's error bars."""
    value = a.mean / b.mean
    if a.half_width is None or b.half_width is None:
        return Stat(value, None, None, min(a.n, b.n))
    half = value * math.hypot(a.half_width / a.mean, b.half_width / b.mean)
    return Stat(value, None, half, min(a.n, b.n))


def _fine_tuned(coll: Collection, model: str, baseline_only: bool = True) -> list[str]:
    """The methods that trained (not reference rows); ``baseline_only``: those run on every layer and module."""
    return [m for m in coll.methods(model, baseline_only=baseline_only) if m not in reference_methods(coll)]


def _panels(coll: Collection, scales: tuple = (), task_type: str | None = None) -> Iterator[tuple]:
    """(model, task, scale) of the results, optionally of some scales and one task type."""
    for model in coll.models():
        for task in coll.tasks(model):
            if task_type and coll.task_info(task).get("type") != task_type:
                continue
            for scale in coll.scales(model):
                if not scales or scale in scales:
                    yield model, task, scale


def _where(panel: tuple) -> str:
    return ", ".join(str(p) for p in panel)


def _pair(coll: Collection, panel: tuple, a: str, b: str, quantity: Quantity, a_lower: bool, what: str,
          digits: int = 4, scale: float = 1.0, extra: Quantity | None = None) -> Comparison | None:
    """``a`` against ``b`` on one quantity of one panel; None when either has no ok run."""
    sa, sb = coll.cell(*panel, a).stat(quantity), coll.cell(*panel, b).stat(quantity)
    if sa is None or sb is None:
        return None
    verdict = compare(sa, sb, a_lower)
    sign = "<" if sa.mean < sb.mean else (">" if sa.mean > sb.mean else "=")

    def side(method: str, stat: Stat) -> str:
        score = coll.cell(*panel, method).stat(extra) if extra else None
        return f"{method} {what} {fmt(stat, digits, scale)}" + (f" [score {fmt(score)}]" if score else "")

    return Comparison(_where(panel), f"{side(a, sa)} {sign} {side(b, sb)}", verdict)


# ---- the claims ---------------------------------------------------------------------------------------


def _full_converges_first(coll: Collection) -> list[Comparison]:
    found = []
    for panel in _panels(coll, ("low",)):
        for method in _fine_tuned(coll, panel[0]):
            if method != "full":
                found.append(_pair(coll, panel, "full", method, c.best_epoch, True, "best epoch", 2,
                                   extra=c.score))
    return [f for f in found if f]


def _time_ratio_falls(coll: Collection) -> list[Comparison]:
    found = []
    for model in coll.models():
        for task in coll.tasks(model):
            for method in (m for m in _fine_tuned(coll, model) if m != "full"):
                ratios = {}
                for scale in ("low", "medium"):
                    own = coll.cell(model, task, scale, method).stat(c.total_seconds)
                    full = coll.cell(model, task, scale, "full").stat(c.total_seconds)
                    if own is not None and full is not None and full.mean > 0:
                        ratios[scale] = ratio(own, full)
                if len(ratios) == 2:
                    text = (f"{method} time / full's: medium {fmt(ratios['medium'], 3)} vs low "
                            f"{fmt(ratios['low'], 3)}")
                    found.append(Comparison(f"{model}, {task}", text,
                                            compare(ratios["medium"], ratios["low"], True)))
    return found


def _lora_at_least_full(coll: Collection) -> list[Comparison]:
    found = [_pair(coll, panel, "lora", "full", c.score, False, "score")
             for panel in _panels(coll, ("low",), "generation")]
    return [f for f in found if f]


def _ia3_bitfit_least_memory(coll: Collection) -> list[Comparison]:
    found = []
    for panel in _panels(coll):
        for light in ("ia3", "bitfit"):
            for other in _fine_tuned(coll, panel[0]):
                if other not in ("ia3", "bitfit"):
                    found.append(_pair(coll, panel, light, other, c.peak_bytes, True, "peak MiB", 0, 2**-20))
    return [f for f in found if f]


def _prompt_lowest(coll: Collection) -> list[Comparison]:
    found = []
    for panel in _panels(coll):
        for other in _fine_tuned(coll, panel[0]):
            if other != "prompt":
                found.append(_pair(coll, panel, "prompt", other, c.score, True, "score"))
    return [f for f in found if f]


def _later_beats_early(coll: Collection) -> list[Comparison]:
    found = []
    for model, task, scale in _panels(coll):
        for method in _fine_tuned(coll, model, baseline_only=False):
            later = coll.cell(model, task, scale, method, "later_layers").stat(c.score)
            early = coll.cell(model, task, scale, method, "early_layers").stat(c.score)
            if later is None or early is None:
                continue
            every = coll.cell(model, task, scale, method).stat(c.score)
            base = f" (all layers {fmt(every)})" if every else ""
            text = f"{method}: later layers {fmt(later)} vs early layers {fmt(early)}{base}"
            found.append(Comparison(f"{model}, {task}, {scale}", text, compare(later, early, False)))
    return found


CLAIMS = (
    Claim("full-converges-first", "Full tuning reaches its best epoch in fewer epochs than every PEFT method "
          "at low scale", "§3.2, Figure 1, Table 4",
          "full tuning Ep. 2-4; (IA)3, LoRA, BitFit Ep. 5-9; prompt tuning Ep. 3-9 (low)", _full_converges_first),
    Claim("peft-time-ratio-falls", "PEFT's run time relative to full tuning's falls from low to medium scale",
          "§3.2, Figure 1, Table 4", "e.g. LoRA/full on AG News 2.52 (low) → 1.85 (medium)", _time_ratio_falls),
    Claim("lora-matches-full-low-generation", "At low scale on generation tasks LoRA scores at least as well as "
          "full tuning", "§3.2, Table 1", "E2E NLG 0.4826 vs 0.4646, SAMSum 0.4120 vs 0.3876",
          _lora_at_least_full),
    Claim("ia3-bitfit-least-memory", "(IA)3 and BitFit use the least training memory (memory.peak_bytes)",
          "§3.2, Table 5", "BitFit and (IA)3 best for memory at low scale, (IA)3 at medium/high",
          _ia3_bitfit_least_memory),
    Claim("prompt-scores-lowest", "Prompt tuning scores lowest of the methods", "§3.2, Table 1, §A.5",
          "e.g. E2E NLG low 0.0258 against 0.2951-0.4883", _prompt_lowest),
    Claim("later-layers-cost-less", "Adapting the later layers costs less score than adapting the early "
          "layers", "§3.3, Table 2", "(IA)3 AG News 0.9212 (later) vs 0.60 (early); LoRA CoLA 0.8218 vs 0.7031",
          _later_beats_early),
)


def check_claims(coll: Collection) -> list[Verdict]:
    verdicts = []
    for claim in CLAIMS:
        comparisons = claim.compare(coll)
        verdicts.append(Verdict(claim, combine([x.verdict for x in comparisons]), comparisons))
    return verdicts


# ---- output -------------------------------------------------------------------------------------------


def format_text(verdicts: list[Verdict]) -> str:
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict}] {v.claim.statement} ({v.claim.source}; {v.claim.id})")
        lines.append(f"    paper (FLAN-T5-XL): {v.claim.paper}")
        if not v.comparisons:
            lines.append("    no results to compare")
        lines += [f"    {x.verdict}: {x.where}: {x.text}" for x in v.comparisons]
    counts = {name: sum(v.verdict == name for v in verdicts) for name in (HOLDS, FAILS, INCONCLUSIVE)}
    lines.append(", ".join(f"{n} {name}" for name, n in counts.items()) + f" of {len(verdicts)} claims.")
    return "\n".join(lines)


def write_markdown(coll: Collection, path: Path) -> Path:
    lines = ["# The paper's claims, checked on these results", "", c.provenance(coll.runs), "",
             "A comparison holds or fails only with several seeds whose 95% intervals are apart; one seed or "
             "overlapping intervals are inconclusive.", ""]
    for v in check_claims(coll):
        lines += [f"## {v.claim.statement}: **{v.verdict}**", "",
                  f"{v.claim.source}. Paper (FLAN-T5-XL): {v.claim.paper}.", ""]
        lines += [f"- {x.verdict}: {x.where}: {x.text}" for x in v.comparisons] or ["- no results to compare"]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def claims_html(coll: Collection) -> str:
    parts = ['<h2 id="claims">The paper\'s claims</h2>',
             '<p class="note">Holds or fails only with several seeds whose 95% intervals are apart.</p>']
    for v in check_claims(coll):
        items = "".join(f"<li>{escape(f'{x.verdict}: {x.where}: {x.text}')}</li>" for x in v.comparisons)
        parts.append(f"<h3>{escape(v.claim.statement)}: {escape(v.verdict)}</h3>"
                     f'<p class="note">{escape(v.claim.source)}. Paper: {escape(v.claim.paper)}.</p>'
                     f"<ul>{items or '<li>no results to compare</li>'}</ul>")
    return "\n".join(parts)


def collect_many(results_dirs: list[Path]) -> Collection:
    """One collection of the results of several directories."""
    parts = [c.collect(Path(d)) for d in results_dirs]
    runs = [run for part in parts for run in part.runs]
    cells: dict = {}
    for run in runs:
        key = c.cell_key(run)
        cells.setdefault(key, c.Cell(key)).runs.append(run)
    return Collection(Path(results_dirs[0]), runs, cells, [s for part in parts for s in part.skipped])
