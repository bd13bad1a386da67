#!/usr/bin/env bash
# The torch backend's clips/s in this tree vs an earlier commit, run alternately on the same generated shards
# (a refactor must not slow the loader): bash bench/loader_vs_rev.sh REV [ROUNDS]. Prints one line per run.
set -euo pipefail
REV=${1:?usage: bench/loader_vs_rev.sh REV [ROUNDS]}; ROUNDS=${2:-4}
cd "$(dirname "$0")/.."; HERE=$PWD; PY=$HERE/.venv/bin/python
W=$(mktemp -d); trap 'git -C "$HERE" worktree remove --force "$W/old" >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
git worktree add -q --detach "$W/old" "$REV"
$PY tools/profile_loader.py --generate "$W/data" --backends torch --batches 1 --warmup 0 --rounds 1 > /dev/null
for r in $(seq "$ROUNDS"); do
  for side in old new; do
    src=$HERE; [ "$side" = old ] && src=$W/old
    (cd "$src" && PYTHONPATH=$src $PY tools/profile_loader.py --data "$W/data/out" --raw "$W/data/raw" --backends torch \
      --batch-size 8 --batches 30 --warmup 3 --rounds 1 --workers 2 --json "$W/$side-$r.json" > /dev/null 2>&1)
    echo "$side round $r: $($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]))['results'][0]['clips_per_s'], 1))" "$W/$side-$r.json") clips/s, load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
