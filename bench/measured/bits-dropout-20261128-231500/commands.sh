# peftbench side alone, tiny T5 LoRA CoLA seed 0: torch's dropout masks (commit ae03620) and dropout masks
# from random bits (commit 6d0e427), alternating.
# Run then as an inline loop over two checkouts; the same runs, as a script:
bench/alternate_commits.sh ae03620 6d0e427 t5tiny-lora-cola 0 4
