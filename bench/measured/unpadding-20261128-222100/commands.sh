# peftbench side alone, LoRA CoLA seed 1: eager attention without unpadding (commit 80813bb) and with it, alternating
cd /work/main
# old = commit 80813bb, checked out with: git worktree add /tmp/eagerkern 80813bb
for i in 1 2 3; do
  for v in old new; do
    if [ $v = old ]; then root=/tmp/eagerkern; else root=/work/main; fi
    PYTHONPATH=$root/src .venv/bin/python $root/bench/compare_trainer.py --cells smollm2-lora-cola --seeds 1 --sides peftbench --data-dir ../shared/data --out-dir /tmp/unpadcell 2>&1 | grep "smollm2-lora-cola | peftbench" | sed "s/^/$v /"
  done
done
