cd /work/main
for i in 1 2 3; do
  for v in 0 60; do
    .venv/bin/python bench/compare_trainer.py --cells smollm2-full-cola --seeds 1 --sides peftbench --data-dir ../shared/data --set train.checkpoint_interval_s=$v 2>&1 | grep "to result\|written" | sed "s/^/interval=$v /"
  done
done
