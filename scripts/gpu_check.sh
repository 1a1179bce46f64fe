#!/usr/bin/env bash
# Everything a GPU has to show, in one call (under 8 minutes on one GPU); writes one markdown file.
#
#   bash scripts/gpu_check.sh [OUT.md]        # default gpu_check.md
#
# Steps: the CUDA tests (pytest -m cuda); the model (portrait and lite at 512 and 1024, float16 and
# bfloat16, eager and CUDA graph; torch.compile at float16); the file pipeline at 1024 with
# foreground estimation; live at 512 and 1024 with a 1920x1080 camera at 60 fps, keyframe every
# frame and every 2nd frame. Without CUDA every step that needs
# it is skipped and the script still finishes (tests/test_gpu_check.py checks that). A step that
# would start after GPU_CHECK_DEADLINE_S seconds (default 420) is skipped and no step runs past
# 45 s after it, so the whole call stays under 8 minutes; each step also has its own time limit. Environment: GPU_CHECK_PYTEST_ARGS
# (what pytest collects, default tests/), GPU_CHECK_DEADLINE_S.
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu_check.md}
deadline=${GPU_CHECK_DEADLINE_S:-420}
hard=$((deadline + 45)) # no step runs past this: the call ends before 8 minutes
pytest_args=${GPU_CHECK_PYTEST_ARGS:-tests/}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    cuda=yes
    gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0))")
else
    cuda=no
    gpu="none (CUDA not available)"
fi

rows=()
details=()
# step NAME LIMIT_S NEEDS_CUDA COMMAND...: runs it (or says why not) and records one row.
step() {
    local name=$1 limit=$2 needs=$3
    shift 3
    local log="$work/$(echo "$name" | tr -c 'a-z0-9' '_').log"
    if [[ $needs == cuda && $cuda == no ]]; then
        rows+=("| $name | skipped: no CUDA | 0 | |")
        return
    fi
    if ((SECONDS - start > deadline)); then
        rows+=("| $name | skipped: past the ${deadline} s deadline | 0 | |")
        return
    fi
    local left=$((hard - (SECONDS - start)))
    ((limit > left)) && limit=$left
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
    local status="ok"
    ((rc == 124)) && status="timed out after ${limit} s"
    ((rc != 0 && rc != 124)) && status="failed (exit $rc)"
    local summary
    summary=$(grep -E "passed|failed|skipped|error" "$log" | tail -1 | tr '|' '/' | cut -c1-120)
    rows+=("| $name | $status | $((SECONDS - t0)) | ${summary} |")
    details+=("### $name" "" "\`$*\`" "" "$(grep -E '^\|' "$log" || tail -5 "$log")" "")
}

step "CUDA tests" 150 any python -m pytest -q -m cuda -p no:cacheprovider $pytest_args
step "model eager + CUDA graph" 150 cuda python scripts/bench_model.py --device cuda \
    --variants portrait lite --sizes 512 1024 --dtypes float16 bfloat16 --modes eager graph \
    --repeats 20 --budget 4 --timeout 60
step "model torch.compile" 150 cuda python scripts/bench_model.py --device cuda \
    --variants portrait lite --sizes 512 1024 --dtypes float16 --modes compile \
    --repeats 20 --budget 4 --timeout 70
step "file pipeline 1024, foreground estimation" 90 cuda python scripts/bench_pipeline.py --device cuda \
    --variant portrait --size 1024 --clip 1920x1080 --frames 48 --rounds 1
step "live portrait 512/1024, 1920x1080 at 60 fps, keyframe every 1 and 2" 180 cuda \
    python scripts/bench_live.py --device cuda --variant portrait --model-size 512,1024 \
    --frame-sizes 1920x1080 --fps 60 --keyframe-every 1,2 --paths direct --duration 15

{
    echo "# gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "GPU: $gpu; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); total $((SECONDS - start)) s"
    echo
    echo "| step | status | seconds | summary |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    ((${#details[@]})) && printf '%s\n' "${details[@]}"
} >"$out"
echo "gpu_check: wrote $out ($((SECONDS - start)) s)"
