# peftbench side alone, LoRA CoLA seed 1: the previous commit's kernels (SDPA math/flash) and eager attention,
# alternating; the new side ran from the working tree that was committed as 80813bb.
# Run then as an inline loop over two checkouts; the same runs, as a script:
bench/alternate_commits.sh 8c2dc8d 80813bb smollm2-lora-cola 1 3
