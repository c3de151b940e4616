#!/bin/bash
# Gemma 3 270M measurements (issue 17), one model job after another (never two at once on a
# small machine): perplexity with and without BOS, causal trace (sets the registered edit layer to
# its peak), the full CounterFact screen, a HardCF list mined from it (70 riskiest + 30 controls),
# the calibration, the done-when pytest runs (ROME, C-ROME), the positions and prefix analyses and
# 10-step hard/normal sequences for ROME and C-ROME. ~1 h on 2 CPU cores.
#     EDITGUARD_DATA=/path/to/shared/data bash bench/gemma_measurements.sh
set -x
cd "$(dirname "$0")/.."; ROOT=$PWD
export EDITGUARD_DATA=${EDITGUARD_DATA:?set EDITGUARD_DATA} PYTHONPATH=$ROOT EDITGUARD_SUITES=$ROOT/suites
R=${GEMMA_RUNS:-$ROOT/out/gemma-runs}; mkdir -p "$R" out

python -m editguard.cli ppl --model gemma3-270m --ppl-bos never
python -m editguard.cli ppl --model gemma3-270m --ppl-bos tokenizer
python bench/causal_trace.py --model gemma3-270m --facts 8 --samples 4 --pool 40 --window 5 \
    -o bench/results/causal-trace-gemma3-270m.json
LAYER=$(python -c "
import json
d = json.load(open('bench/results/causal-trace-gemma3-270m.json'))
e = d['effect']; lowest = d['window'] // 2 + 1
print(max(range(lowest, len(e)), key=e.__getitem__))")
echo "causal-trace peak: layer $LAYER (GEMMA3_EDIT_LAYER in editguard/models/registry.py)"
sed -i "s/^GEMMA3_EDIT_LAYER = .*/GEMMA3_EDIT_LAYER = $LAYER  # the causal trace's peak (bench\/results\/causal-trace-gemma3-270m.json)/" \
    editguard/models/registry.py

python -m editguard.cli screen --model gemma3-270m --cases counterfact --json out/screen-gemma3-270m.json --show 10
python -m editguard.cli mine --model gemma3-270m --editor rome --cases counterfact --screen out/screen-gemma3-270m.json \
    --top 70 --control 30 --json editguard-suites/hardcf/gemma3-270m.json
# editguard never writes into its own checkout; the maintainer ships the list by copying it there.
cp editguard-suites/hardcf/gemma3-270m.json suites/hardcf/gemma3-270m.json
python -m editguard.cli calibrate --model gemma3-270m
(cd "$R" && python -m pytest "$ROOT/suites/hardcf" --editor=rome --model=gemma3-270m --max-cases 3 --editguard-json r.json)
(cd "$R" && python -m pytest "$ROOT/suites/hardcf" --editor=c-rome --model=gemma3-270m --max-cases 20 --editguard-json r-crome.json)
python -m editguard.cli analyze positions --model gemma3-270m --cases hardcf --max-cases 6 \
    --json bench/results/analyze-positions-gemma3-270m-rome.json
python -m editguard.cli analyze prefix --model gemma3-270m --cases hardcf --max-cases 6 \
    --json bench/results/analyze-prefix-gemma3-270m-c-rome.json
for editor in rome c-rome; do for sequence in hard normal; do
    python bench/long_sequences.py run --model gemma3-270m --editor $editor --sequence $sequence --steps 10 --ppl-every 5
done; done
python -m editguard.cli calibrate --model smollm2-135m
