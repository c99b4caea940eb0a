"""Full fine-tuning: every weight trains (the paper's baseline)."""

from peftbench.catalog.methods import FULL_LR, METHODS, MethodSpec

METHODS.register("full", MethodSpec("full", "every weight trains", FULL_LR, lambda ctx: None, selectable=False,
                                     label="Full Tuning", order=0, family="full"))
