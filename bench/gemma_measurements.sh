#!/bin/bash
# Gemma 3 270M measurements (issue 17), each step under the shared model lock on its own:
# embedded tests + causal trace (sets the registered edit layer to the trace's peak), a HardCF
# list mined from a 900-case pool (600 riskiest-by-structure subject-first cases + 300 normal
# ones; the full 21,919-case screen is `editguard screen --model gemma3-270m`), the done-when
# pytest runs (ROME, C-ROME, 3 cases), and the calibrations of gemma3-270m and smollm2-135m.
#     EDITGUARD_DATA=/path/to/shared/data bash bench/gemma_measurements.sh
cd "$(dirname "$0")/.."; ROOT=$PWD
export EDITGUARD_DATA=${EDITGUARD_DATA:?set EDITGUARD_DATA} PYTHONPATH=$ROOT EDITGUARD_SUITES=$ROOT/suites
L=/tmp/editguard-model.lock
R=${GEMMA_RUNS:-$ROOT/out/gemma-runs}; mkdir -p $R
# The mining pool: tokenizer only (no weights), so no lock.
python - "$R/mine-pool.json" <<'PY'
import random, sys
from editguard.cases import load_counterfact, write_cases
from editguard.models import load_tokenizer
from editguard.suites import hardcf_candidates, normal_cases
cases = load_counterfact(None)
pool = hardcf_candidates(cases, load_tokenizer("gemma3-270m"))[:600]
pool += sorted(random.Random(0).sample(normal_cases(cases), 300), key=lambda c: int(c.case_id))
write_cases(sys.argv[1], pool)
PY
step() { echo "=== $1 start $(date -u +%T)"; }
done_() { echo "=== $1 end $(date -u +%T) rc=$2"; }

step trace; flock $L bash -c "python -m pytest tests/test_gemma.py -q -p no:cacheprovider > $R/test-gemma.log 2>&1; time python bench/causal_trace.py --model gemma3-270m --facts 8 --samples 4 --pool 40 --window 5 -o bench/results/causal-trace-gemma3-270m.json" > $R/trace.log 2>&1; done_ trace $?
LAYER=$(python - <<'PY'
import json
d = json.load(open("bench/results/causal-trace-gemma3-270m.json"))
e = d["effect"]; lowest = d["window"] // 2 + 1
print(max(range(lowest, len(e)), key=e.__getitem__))
PY
)
echo "chosen layer $LAYER"
[ -n "$LAYER" ] && sed -i "s/^GEMMA3_EDIT_LAYER = .*/GEMMA3_EDIT_LAYER = $LAYER  # the causal trace's peak (bench\/results\/causal-trace-gemma3-270m.json)/" editguard/models/registry.py

step mine; flock $L bash -c "time python -m editguard.cli mine --model gemma3-270m --editor rome --cases $R/mine-pool.json --screen out/screen-pool-gemma3-270m.json --top 6 --control 3 --json suites/hardcf/gemma3-270m.json" > $R/mine.log 2>&1; done_ mine $?

mkdir -p $R/dw && cd $R/dw
step pytest-rome; flock $L bash -c "time python -m pytest $ROOT/suites/hardcf --editor=rome --model=gemma3-270m --max-cases 3 --editguard-json r.json -p no:cacheprovider" > $R/dw-rome.log 2>&1; done_ pytest-rome $?
step pytest-crome; flock $L bash -c "time python -m pytest $ROOT/suites/hardcf --editor=c-rome --model=gemma3-270m --max-cases 3 --editguard-json r-crome.json -p no:cacheprovider" > $R/dw-crome.log 2>&1; done_ pytest-crome $?
cd "$(dirname "$0")/.."; ROOT=$PWD
step calibrate-gemma; flock $L bash -c "time python -m editguard.cli calibrate --model gemma3-270m --cases 10" > $R/cal-gemma.log 2>&1; done_ calibrate-gemma $?
step calibrate-smollm2; flock $L bash -c "time python -m editguard.cli calibrate --model smollm2-135m" > $R/cal-smollm2.log 2>&1; done_ calibrate-smollm2 $?
