#!/usr/bin/env bash
# One cell's peftbench side timed with two commits of this repository, alternating, in this checkout's venv:
#
#     bench/alternate_commits.sh OLD NEW CELL SEED REPEATS [DATA_DIR]
#
# e.g. bench/alternate_commits.sh 19a8967 c9a77e7 smollm2-lora-cola 1 3. Each commit is checked out once
# under /tmp/peftbench-commits/<commit> (git worktree) and imported from there (PYTHONPATH); the runs go
# old, new, old, new, ... so that a slow spell of a shared machine falls on both. Prints each run's
# compare_trainer.py row, prefixed with "old" or "new".
set -euo pipefail
old=$1 new=$2 cell=$3 seed=$4 repeats=$5 data_dir=${6:-../shared/data}
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
for commit in "$old" "$new"; do
  [ -d "/tmp/peftbench-commits/$commit" ] || git -C "$repo" worktree add -f "/tmp/peftbench-commits/$commit" "$commit" >/dev/null
done
for _ in $(seq "$repeats"); do
  for side in old new; do
    root=/tmp/peftbench-commits/$([ "$side" = old ] && echo "$old" || echo "$new")
    PYTHONPATH="$root/src" "$repo/.venv/bin/python" "$root/bench/compare_trainer.py" --cells "$cell" --seeds "$seed" \
      --sides peftbench --data-dir "$data_dir" --out-dir "$out" 2>&1 | grep "| $cell | peftbench" | sed "s/^/$side /"
  done
done
