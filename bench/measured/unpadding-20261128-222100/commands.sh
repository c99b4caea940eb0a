# peftbench side alone, LoRA CoLA seed 1: eager attention without unpadding (commit 80813bb) and with it,
# alternating; the new side ran from the working tree that was committed as 23ae8a9.
# Run then as an inline loop over two checkouts; the same runs, as a script:
bench/alternate_commits.sh 80813bb 23ae8a9 smollm2-lora-cola 1 3
