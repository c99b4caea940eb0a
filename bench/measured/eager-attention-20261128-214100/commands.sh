# peftbench side alone, LoRA CoLA seed 1: the previous commit's kernels (SDPA math/flash) and eager attention, alternating
cd /work/main
# old = commit 8c2dc8d, checked out with: git worktree add /tmp/oldkern 8c2dc8d
for i in 1 2 3; do
  for v in old new; do
    if [ $v = old ]; then root=/tmp/oldkern; else root=/work/main; fi
    PYTHONPATH=$root/src .venv/bin/python $root/bench/compare_trainer.py --cells smollm2-lora-cola --seeds 1 --sides peftbench --data-dir ../shared/data --out-dir /tmp/eagercell 2>&1 | grep "smollm2-lora-cola | peftbench" | sed "s/^/$v /"
  done
done
