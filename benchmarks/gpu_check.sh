#!/usr/bin/env bash
# benchmarks/gpu_check.sh: everything codemill has not measured on a GPU, in one call of the device
# machine (one H200, 16 cores, no network, the image's own python3 and torch), in at most 9 minutes.
#
# 1. Here, on a CPU machine with network, once per checkout (about 5 minutes on 2 cores):
#
#      make .venv/.installed            # the project's environment, if it is not built yet
#      .venv/bin/python benchmarks/gpu_check.py prepare
#
#    writes runs/gpu_check/ (ignored by git, about 40 MB): the embedded corpus (`codemill curate
#    installed`, cut to whole repositories under 30 MB of Parquet), a 32,768-id tokenizer for `small`
#    and an 8,192-id one for `demo`, the held-out FIM and cross-file benchmarks for fim-loss, and wheels
#    for the packages the device image lacks (tree-sitter and grammars, xxhash 3, fastapi, pydantic,
#    uvicorn, opentelemetry-api: see WHEELS in gpu_check.py), built for its CPython 3.12.
#
# 2. The device call (the `run` tool), exactly:
#
#      command:   bash benchmarks/gpu_check.sh
#      carry:     ["runs/gpu_check"]
#      timeout_s: 600
#
#    It returns $OUT/gpu_check.json (one object per step: name, seconds, budget, status, exit code,
#    its numbers, the end of its log if it did not pass), $OUT/gpu_check.md (the table for
#    docs/benchmarks.md, with date, GPU, torch and CUDA versions) and $OUT/gpu_check.log (every
#    step's output, up to 2 MB each). The table is also printed last. Then give the machine back.
#
# Steps and budgets on the H200, seconds. Each step runs under `timeout`: a step that hangs or fails
# is recorded with its exit code and log, and the next one starts. The budgets add up to 540 (9
# minutes; about 8 expected: the training run alone takes its 4 minutes whatever happens), and the
# report is rewritten after every step, so even a call cut at its 600 s returns every step that ended:
#
#   env          15  the carried wheels installed (pip --target, no network), versions, the bf16
#                    matmul rate and copy bandwidth measured (the ceilings, METHOD.md)
#   gpu-tests    70  pytest -m gpu tests/test_gpu.py: a bf16 FSDP2 step against fp32, the trainer
#                    in bf16 and compiled, the engine on CUDA against the CPU (fp32) and in bf16
#   bench-train  75  bench_train.py: preset 1b, 4 x 4,096 tokens, bf16, each block compiled:
#                    tokens/s and MFU against the H200's 989 TFLOP/s
#   train-small 285  the small preset on the embedded corpus: fim-loss of the initial weights, 240 s
#                    of `codemill train` (compiled, bf16, 64 x 2,048), fim-loss of the result
#   serve-demo   55  bench_serve.py --quick on CUDA, demo preset: cold, warm and typing latency,
#                    decode tokens/s, --compile, 4 at once, 4 and 8 concurrent clients over HTTP
#   serve-small  40  the same for the small model just trained (no --compile)
#
# bash benchmarks/gpu_check.sh --cpu-smoke: every step at toy size on the CPU (a toy `prepare` first,
# from standard-library packages; the GPU tests run on the CPU through CODEMILL_TEST_DEVICE=cpu), in
# under 2 minutes on 2 cores; tests/test_gpu_check.py runs it, so the script cannot rot between GPUs.
#
# Environment: OUT (default runs/gpu_check_out), PYTHON (default python3; .venv/bin/python for the
# smoke when it exists), GPU_CHECK_DATA (default runs/gpu_check), GPU_CHECK_WORK (scratch; default
# /tmp/gpu_check, a fresh temporary directory for the smoke).
# Each step's command is a single-quoted string its own bash expands (PY, WORK, DATA, SITE are exported):
# shellcheck disable=SC2016
set -uo pipefail

MODE=gpu
case "${1:-}" in
--cpu-smoke) MODE=smoke ;;
"") ;;
*)
	echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2
	exit 2
	;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
OUT=${OUT:-$ROOT/runs/gpu_check_out}
mkdir -p "$OUT"
if [[ $MODE == smoke ]]; then
	[[ -z ${PYTHON:-} && -x $ROOT/.venv/bin/python ]] && PYTHON=$ROOT/.venv/bin/python
	WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_smoke.XXXXXX")}
	DATA=$WORK/data
	export CUDA_VISIBLE_DEVICES="" CODEMILL_TEST_DEVICE=cpu
else
	WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
	DATA=${GPU_CHECK_DATA:-$ROOT/runs/gpu_check}
fi
PY=${PYTHON:-python3}
SITE=$WORK/site
mkdir -p "$WORK"
rm -f "$WORK/steps.tsv" "$WORK"/*.json "$WORK"/*.xml "$WORK"/*.log "$OUT/gpu_check.json" "$OUT/gpu_check.md"
LOG=$OUT/gpu_check.log
: >"$LOG"
# codemill from this checkout (the device image does not have it installed), the carried wheels first
export PY WORK DATA SITE PYTHONUNBUFFERED=1 PYTHONPATH=$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}

now() { date +%s.%N; }

# step NAME BUDGET COMMAND: COMMAND (a bash string; PY, WORK, DATA and SITE are set) under `timeout`,
# its output in $WORK/NAME.log and appended to the log; a line in steps.tsv for the report
step() {
	local name=$1 budget=$2 cmd=$3 t0 rc secs
	echo "[$(date -u +%H:%M:%S)] $name (budget ${budget} s)"
	t0=$(now)
	timeout -k 10 "$budget" bash -c "$cmd" >"$WORK/$name.log" 2>&1
	rc=$?
	secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
	printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$rc" "$secs" >>"$WORK/steps.tsv"
	{
		printf '\n===== %s: exit %s after %s s (budget %s s): %s\n' "$name" "$rc" "$secs" "$budget" "$cmd"
		tail -c 2000000 "$WORK/$name.log"
	} >>"$LOG"
	echo "    exit $rc after $secs s"
	# the report so far: if the whole call is cut, $OUT still holds every step that ended
	"$PY" benchmarks/gpu_check.py report --work "$WORK" --out "$OUT" --mode "$MODE" >/dev/null 2>&1 || true
}

if [[ $MODE == smoke ]]; then
	echo "[$(date -u +%H:%M:%S)] toy data in $DATA"
	if ! "$PY" benchmarks/gpu_check.py prepare --toy --no-wheels --out "$DATA" >"$WORK/prepare.log" 2>&1; then
		cat "$WORK/prepare.log" >&2
		echo "the toy prepare failed" >&2
		exit 1
	fi
	TINY="{hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4, num_kv_heads: 2}"
	step env 30 '"$PY" benchmarks/gpu_check.py env --json "$WORK/env.json"'
	step gpu-tests 60 '"$PY" -m pytest -m gpu tests/test_gpu.py -k "not compiled" -vv -p no:cacheprovider \
		--junitxml "$WORK/gpu-tests.xml"'
	step bench-train 30 '"$PY" benchmarks/bench_train.py --preset demo --seq-len 64 --batch 2 --device cpu \
		--dtype bf16 --no-reference --steps 2 --warmup 1 --json "$WORK/bench-train.json"'
	step train-small 60 '"$PY" benchmarks/gpu_check.py train --data "$DATA" --run "$WORK/train-small" \
		--json "$WORK/train-small.json" --preset demo --model "'"$TINY"'" --seconds 6 --seq-len 128 \
		--global-batch 4 --micro-batch 2 --warmup 2 --log-every 2 --files 8 --limit 12 --no-compile'
	step serve-demo 45 '"$PY" benchmarks/gpu_check.py checkpoint --preset demo --model "'"$TINY"'" \
		--tokenizer "$DATA/tokenizer-demo" --out "$WORK/ckpt-demo" &&
		"$PY" benchmarks/bench_serve.py --model "$WORK/ckpt-demo" --quick --device cpu --tokens 8 \
		--repeats 1 --parallel 2 --clients 2 --requests 1 --json "$WORK/serve-demo.json"'
	step serve-small 30 '"$PY" benchmarks/bench_serve.py --model "$WORK/train-small/train/final" --quick \
		--device cpu --tokens 8 --repeats 1 --parallel 2 --clients 0 --json "$WORK/serve-small.json"'
else
	if [[ ! -f $DATA/prepared.json ]]; then
		echo "$DATA/prepared.json is missing: run \`.venv/bin/python benchmarks/gpu_check.py prepare\` on a" \
			"CPU machine with network first, and carry runs/gpu_check (this script's header)" | tee -a "$LOG"
	fi
	step env 15 'if compgen -G "$DATA/wheels/*.whl" >/dev/null; then
		"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
			"$DATA"/wheels/*.whl || exit 1; fi
		nvidia-smi || true
		"$PY" benchmarks/gpu_check.py env --json "$WORK/env.json" --site "$SITE"'
	step gpu-tests 70 '"$PY" -m pytest -m gpu tests/test_gpu.py -vv -p no:cacheprovider --junitxml "$WORK/gpu-tests.xml"'
	step bench-train 75 '"$PY" benchmarks/bench_train.py --preset 1b --seq-len 4096 --batch 4 --device cuda \
		--dtype bf16 --compile --no-reference --steps 10 --warmup 3 --json "$WORK/bench-train.json"'
	step train-small 285 '"$PY" benchmarks/gpu_check.py train --data "$DATA" --run "$WORK/train-small" \
		--json "$WORK/train-small.json" --preset small --seconds 240'
	step serve-demo 55 '"$PY" benchmarks/gpu_check.py checkpoint --preset demo --tokenizer "$DATA/tokenizer-demo" \
		--out "$WORK/ckpt-demo" &&
		"$PY" benchmarks/bench_serve.py --model "$WORK/ckpt-demo" --quick --device cuda --compile-quick \
		--repeats 3 --clients 4,8 --requests 4 --json "$WORK/serve-demo.json"'
	step serve-small 40 'model=$WORK/train-small/train/final
		if [[ ! -f $model/config.json ]]; then  # the training run failed: the initial weights
			model=$WORK/ckpt-small
			"$PY" benchmarks/gpu_check.py checkpoint --preset small --tokenizer "$DATA/tokenizer" --out "$model" || exit 1
		fi
		"$PY" benchmarks/bench_serve.py --model "$model" --quick --device cuda --repeats 3 --clients 4,8 \
			--requests 4 --json "$WORK/serve-small.json"'
fi

"$PY" benchmarks/gpu_check.py report --work "$WORK" --out "$OUT" --mode "$MODE" || {
	echo "the report failed; the steps' logs are in $LOG" >&2
	exit 1
}
status=0
awk -F'\t' '$3 != 0 { bad = 1 } END { exit bad }' "$WORK/steps.tsv" || status=1
[[ $MODE == smoke && -z ${GPU_CHECK_WORK:-} ]] && rm -rf "$WORK"
exit $status
