#!/bin/bash
# usage: bash bench/equality_runs.sh TREE OUTDIR — the runs of issue 26's equality check on one code tree
# (a checkout of editguard), one job after another; then `editguard compare BEFORE/X.json AFTER/X.json --equal`.
tree=$1; out=$2; mkdir -p $out
# Uses the python on PATH; EDITGUARD_DATA defaults to the tree's ../shared/data.
export EDITGUARD_DATA="${EDITGUARD_DATA:-$tree/../shared/data}" PYTHONPATH=$tree
cd $tree
run() { name=$1; shift; echo "== $name $(date +%T)"; python -m pytest "$@" -p no:cacheprovider -q --editguard-json $out/$name.json > $out/$name.log 2>&1; echo "exit $? $(date +%T)"; }
run rome-hardcf suites/hardcf --model=smollm2-135m --editor=rome --max-cases 4
run crome-hardcf suites/hardcf --model=smollm2-135m --editor=c-rome --max-cases 4
run tiny-counterfact suites/counterfact --model=tiny-llama --editor=rome --max-cases 3 --update-norm-max=5
run tiny-hardedit suites/hardedit --model=tiny-gpt2 --editor=c-rome --max-cases 3 --update-norm-max=5
run tiny-sequence suites/sequential/test_hard_sequence.py --model=tiny-llama --editor=memit --sequence-length 4 --ppl-every 2
run tiny-quality suites/counterfact --model=tiny-llama --editor=rome --max-cases 3 --editguard-quality --update-norm-max=5
