# peftbench side alone, tiny T5 LoRA CoLA seed 0: torch's dropout masks (commit ae03620) and bits_dropout (6d0e427), alternating
cd /work/main
# old = commit ae03620, checked out with: git worktree add /tmp/olddrop ae03620
for i in 1 2 3 4; do
  for v in old new; do
    if [ $v = old ]; then root=/tmp/olddrop; else root=/work/main; fi
    PYTHONPATH=$root/src .venv/bin/python $root/bench/compare_trainer.py --cells t5tiny-lora-cola --seeds 0 --sides peftbench --data-dir ../shared/data --out-dir /tmp/dropcell 2>&1 | grep "t5tiny-lora-cola | peftbench" | sed "s/^/$v /"
  done
done
