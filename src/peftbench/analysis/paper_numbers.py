"""The numbers and sentences of Pu et al. (2023) that the decision framework (``recommend.py``) ranks by:
Table 1's scores, Table 4's run times, §3.2's speed-ups and recommendations, §A.4's parameter counts."""

from __future__ import annotations

PAPER = "Pu et al. (2023)"
PAPER_METHODS = ("full", "ia3", "lora", "bitfit")
"""Methods the framework ranks; prompt tuning is excluded as the paper does (§A.5)."""

# The paper's numbers, columns AG News, CoLA (classification), E2E NLG, SAMSum (generation).
PAPER_TASKS = {"classification": ("AG News", "CoLA"), "generation": ("E2E NLG", "SAMSum")}
# fmt: off
PAPER_TABLE1 = {  # test accuracy / ROUGE-L
    ("full", "low"): (0.8588, 0.699, 0.46464, 0.3876), ("ia3", "low"): (0.67, 0.6973, 0.29508, 0.32924),
    ("lora", "low"): (0.8612, 0.76436, 0.48257, 0.41197), ("bitfit", "low"): (0.8808, 0.7203, 0.48825, 0.41914),
    ("prompt", "low"): (0.60684, 0.68199, 0.0258, 0.00472),
    ("full", "medium"): (0.9212, 0.79119, 0.46523, 0.40908), ("ia3", "medium"): (0.9208, 0.78161, 0.48483, 0.43183),
    ("lora", "medium"): (0.9148, 0.81418, 0.48364, 0.43283), ("bitfit", "medium"): (0.9156, 0.78736, 0.48539, 0.42822),
    ("prompt", "medium"): (0.7312, 0.76245, 0.44173, 0.3792),
    ("full", "high"): (0.934, 0.81417, 0.48051, 0.43356), ("ia3", "high"): (0.9252, 0.80842, 0.4789, 0.43998),
    ("lora", "high"): (0.9264, 0.83333, 0.4756, 0.43485), ("bitfit", "high"): (0.9192, 0.8295, 0.47973, 0.43098),
    ("prompt", "high"): (0.872, 0.80567, 0.45942, 0.3914),
}
PAPER_TABLE4_SECONDS = {  # total run time; the paper has no high-resource timings (one epoch only)
    ("full", "low"): (1249, 89, 2845, 1951), ("ia3", "low"): (6130, 725, 6307, 4096),
    ("lora", "low"): (3146, 687, 9897, 6758), ("bitfit", "low"): (2738, 349, 9426, 5385),
    ("full", "medium"): (1782, 608, 3877, 2089), ("ia3", "medium"): (2565, 537, 5731, 4234),
    ("lora", "medium"): (3303, 1231, 7185, 5627), ("bitfit", "medium"): (2027, 507, 5712, 4101),
}
# fmt: on
PAPER_SPEEDUPS = {"low": (73, 87, 66, 60), "medium": (46, 16, 37, 64)}  # §3.2: full tuning's speed-up, %
PAPER_PARAMS = {"full": 2849757184, "ia3": 933888, "lora": 3538944, "bitfit": 1179648, "prompt": 204800}

# §3.2, last paragraph: the methods recommended per (constraint, scale), and the sentence that says so.
_TIME_LOW = "we recommend full tuning across low/medium data splits ... for time-constrained scenarios"
_PERF_LOW = (
    "For performance-constrained scenarios, we recommend (IA)3, LoRA or BitFit for low/medium-resource"
)
PAPER_RULES: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("time", "low"): (("full",), _TIME_LOW),
    ("time", "medium"): (("full",), _TIME_LOW),
    ("time", "high"): (
        ("ia3", "lora", "bitfit"),
        "[we recommend] PEFT techniques in high-resource for time-constrained scenarios",
    ),
    ("memory", "low"): (("bitfit", "ia3"), "BitFit and (IA)3 perform best in low-resource scenarios"),
    ("memory", "medium"): (("ia3",), "(IA)3 performs best in medium/high-resource scenarios"),
    ("memory", "high"): (("ia3",), "(IA)3 performs best in medium/high-resource scenarios"),
    ("performance", "low"): (("ia3", "lora", "bitfit"), _PERF_LOW),
    ("performance", "medium"): (("ia3", "lora", "bitfit"), _PERF_LOW),
    ("performance", "high"): (("full",), "[we recommend] full tuning in high-resource"),
}
