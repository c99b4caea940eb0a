# peftbench side alone, SmolLM2 LoRA CoLA seed 1: eager attention with repeat_kv (commit 19a8967) and
# grouped-query eager attention (commit c9a77e7), alternating.
# Run then as an inline loop over two checkouts; the same runs, as a script:
bench/alternate_commits.sh 19a8967 c9a77e7 smollm2-lora-cola 1 3
