#!/usr/bin/env bash
# A Colab-like check (not part of .ci/run: it installs a second torch and takes several minutes).
#
#   bash tools/colab_check.sh [ENV_DIR]        # default /tmp/colab-like; reuses ENV_DIR if it exists
#
# Colab ships its own torch and ipywidgets 7.7.x, and its widgets break when a notebook upgrades ipywidgets to 8.
# This builds that situation in a virtual environment (ipywidgets 7.7.5 and torch 2.14, a different minor version
# from the 2.13 the course is developed with, plus Colab's other preinstalled packages the course uses), then checks:
#   1. the set-up cell's install command (`pip install -e <course>`) would replace no package already installed
#      (pip's dry-run report), and after the real install ipywidgets and torch are still the preinstalled ones;
#   2. tests/test_widgets.py passes there;
#   3. chapter 1 runs under nbval (quick mode) there.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR=${1:-/tmp/colab-like}
PY="$ENV_DIR/bin/python"

if [ ! -x "$PY" ]; then
  python3 -m venv "$ENV_DIR"
fi
"$PY" -m pip install -q --disable-pip-version-check "torch==2.14.*" "ipywidgets==7.7.5" numpy matplotlib tqdm scipy \
  scikit-learn pytest nbval ipykernel jupytext 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -m pip list --format json > "$ENV_DIR/before.json"

# 1. what would the set-up cell's command install or replace?
"$PY" -m pip install -q --disable-pip-version-check --dry-run --report "$ENV_DIR/report-plain.json" -e . \
  2>&1 | grep -v "^WARNING: Location" || true
"$PY" - "$ENV_DIR" <<'EOF'
import json, sys
env = sys.argv[1]
before = {p["name"].lower().replace("_", "-"): p["version"] for p in json.load(open(f"{env}/before.json"))}
plan = json.load(open(f"{env}/report-plain.json"))["install"]
replaced = [(i["metadata"]["name"], before[k], i["metadata"]["version"]) for i in plan
            if (k := i["metadata"]["name"].lower().replace("_", "-")) in before and k != "diffusion-course"]
added = [i["metadata"]["name"] for i in plan if i["metadata"]["name"].lower().replace("_", "-") not in before]
print("the set-up cell would add:", ", ".join(sorted(added)) or "nothing")
if replaced:
    sys.exit("the set-up cell would REPLACE preinstalled packages: " + "; ".join(f"{n} {a} -> {b}" for n, a, b in replaced))
print("the set-up cell replaces no preinstalled package")
EOF
"$PY" -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import torch, ipywidgets; assert ipywidgets.__version__.startswith('7.7'), ipywidgets.__version__; \
assert torch.__version__.startswith('2.14'), torch.__version__; print('after the install: torch', torch.__version__, \
'ipywidgets', ipywidgets.__version__)"

# 2. the widgets' tests, and 3. chapter 1 under nbval, in that environment
"$PY" -m pytest -q tests/test_widgets.py
"$PY" -m pytest -q notebooks/01_forward_process.ipynb
echo "Colab-like check passed"
