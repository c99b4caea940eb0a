# peftbench side alone, SmolLM2 LoRA CoLA seed 1: eager attention with repeat_kv (commit 19a8967) and grouped-query eager (c9a77e7), alternating
cd /work/main
# old = commit 19a8967, checked out with: git worktree add /tmp/oldgqa 19a8967
for i in 1 2 3; do
  for v in old new; do
    if [ $v = old ]; then root=/tmp/oldgqa; else root=/work/main; fi
    PYTHONPATH=$root/src .venv/bin/python $root/bench/compare_trainer.py --cells smollm2-lora-cola --seeds 1 --sides peftbench --data-dir ../shared/data --out-dir /tmp/gqacell 2>&1 | grep "smollm2-lora-cola | peftbench" | sed "s/^/$v /"
  done
done
