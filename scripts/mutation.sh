#!/usr/bin/env bash
# Mutation testing of the core modules (setup.cfg [mutmut]) on the unit tier, with mutmut 3.
#
#   scripts/mutation.sh                      every core module (about an hour on 2 cores)
#   scripts/mutation.sh 'comfy_clientid_bridge.batch.engine*'   one module's mutants
#
# Prints the score per module (killed / all; a mutant no test reaches counts as survived)
# and leaves mutants/ for `mutmut results` and `mutmut show <name>`. A second run re-tests
# only what changed since. Not part of .ci/run: too slow for CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export COMFYUI_PATH=/nonexistent  # the unit tier only, even where a ComfyUI is installed

"$PYTHON" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"

"$PYTHON" - <<'PY'
"""Score per module from mutmut's result files: killed (or timed out) of all mutants."""
import json
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}
SURVIVED = {0, 5, 33}
total = Counter()
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    codes = json.loads(meta.read_text())["exit_code_by_key"].values()
    module = meta.relative_to("mutants").as_posix().removesuffix(".meta")
    killed = sum(code in KILLED for code in codes)
    survived = sum(code in SURVIVED for code in codes)
    checked = killed + survived
    total.update(killed=killed, checked=checked)
    score = f"{100 * killed / checked:5.1f}%" if checked else "    -"
    print(f"{score}  {killed:4}/{checked:<4} {module}")
if total["checked"]:
    print(f"{100 * total['killed'] / total['checked']:5.1f}%  {total['killed']:4}/{total['checked']:<4} all")
PY
