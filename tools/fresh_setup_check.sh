#!/usr/bin/env bash
# The README's set-up, as written, on a fresh copy of the course, as a normal user and as root — a maintainer's check
# for Linux, run as root from a git clone (not part of .ci/run: each run installs a whole 1.5 GB environment, about a
# minute on this project's machine with its fast link to PyPI).
#
#   bash tools/fresh_setup_check.sh [USER]      # run as root; USER (default: learner) is created if missing
#
# For USER and then for root: the committed tree (`git archive HEAD`, like a download of the repository) is unpacked
# into a new folder in that account's home, and the first command of the README's "Get started" — read from README.md,
# so that what is checked is what is written — runs there with a fresh pip cache, JupyterLab told `--no-browser` on a
# free port. The check passes when JupyterLab answers and lists the nine chapters, the new environment imports the
# course and torch, and the launcher said where Fashion-MNIST is (or what to do offline); as root, JupyterLab
# answering shows that the launcher added --allow-root (JupyterLab refuses root without it). It prints the
# environment's size and the time from the command's start to JupyterLab's answer.
#
# Where PyTorch's CPU wheel index cannot be reached (this project's build machine sees only PyPI), the command's torch
# step takes the CPU build of torch 2.13.0 from a local folder instead (TORCH_CPU_WHEELS, default /opt/wheels), and
# the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
LEARNER=${1:-learner}
[ "$(id -u)" = 0 ] || { echo "run as root: it creates the user $LEARNER and runs the set-up as both" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }

# the README's first command: the first ```bash block after "## Get started"
CMD=$(python3 - <<'EOF'
import re
text = open("README.md").read()
block = re.search(r"## Get started.*?```bash\n(.*?)\n```", text, re.S).group(1).strip()
print(block)
EOF
)
echo "README's command: $CMD"
if ! python3 -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/', timeout=10)" \
    2>/dev/null; then
  wheels=${TORCH_CPU_WHEELS:-/opt/wheels}
  ls "$wheels"/torch-*+cpu-*.whl >/dev/null 2>&1 || { echo "PyTorch's CPU index is unreachable and $wheels has no CPU build of torch (set TORCH_CPU_WHEELS)" >&2; exit 2; }
  echo "PyTorch's CPU index is unreachable here: its torch step takes the CPU build from $wheels instead"
  CMD=${CMD//python -m pip install torch --index-url https:\/\/download.pytorch.org\/whl\/cpu/python -m pip install torch==2.13.0+cpu --find-links $wheels}
fi
case "$CMD" in *"python -m diffusion_course.lab"*) ;; *) echo "the command does not end with the launcher" >&2; exit 1;; esac

cert=""
[ -f /etc/ssl/certs/ca-certificates.crt ] && cert="PIP_CERT=/etc/ssl/certs/ca-certificates.crt"
id "$LEARNER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$LEARNER"
status=0
for who in "$LEARNER" root; do
  home=$(getent passwd "$who" | cut -d: -f6)
  dir="$home/diffusion-course-check"
  rm -rf "$dir" && mkdir -p "$dir"
  git archive HEAD | tar -x -C "$dir"
  chown -R "$who" "$dir"
  port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  run=${CMD//python -m diffusion_course.lab/python -m diffusion_course.lab --no-browser --port=$port --ServerApp.ip=127.0.0.1 --IdentityProvider.token=check }
  echo "== as $who, in $dir"
  start=$(date +%s)
  # a login shell of that account, with no pip cache and no pip configuration of this machine (a fresh machine has
  # neither: everything but the torch step comes from PyPI); its own session, to stop it all later
  # (only the system's CA bundle is kept: a network that inspects TLS needs it, and it is not a step of the set-up)
  setsid runuser -l "$who" -c "cd '$dir' && export PIP_NO_CACHE_DIR=1 PIP_CONFIG_FILE=/dev/null $cert && $run" \
    > "$dir.log" 2>&1 &
  pid=$!
  ok=0
  for _ in $(seq 1 1800); do
    if curl -fsS "http://127.0.0.1:$port/api/contents/?token=check" -o "$dir.contents.json" 2>/dev/null; then ok=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  secs=$(( $(date +%s) - start ))
  kill -- -$pid 2>/dev/null || true
  pkill -f -- "--port=$port " 2>/dev/null || true     # JupyterLab itself: runuser starts it in a session of its own
  sleep 2
  if [ $ok = 1 ]; then
    python3 - "$dir.contents.json" "$dir.log" "$who" <<'EOF' || status=1
import json, sys
names = sorted(c["name"] for c in json.load(open(sys.argv[1]))["content"])
log = open(sys.argv[2], errors="replace").read()
chapters = [n for n in names if n.endswith(".ipynb")]
assert len(chapters) == 9, f"JupyterLab lists {chapters}, not the nine chapters"
assert "Fashion-MNIST: ready" in log or "Fashion-MNIST is not available yet" in log, "the launcher said nothing of the data"
print("   JupyterLab lists", len(chapters), "chapters;", next(l for l in log.splitlines() if "Fashion-MNIST" in l))
EOF
    # from / so that the import finds the installed course, not a folder that happens to be the working directory
    (cd / && runuser -u "$who" -- "$dir/.venv/bin/python" -c "import diffusion_course as dc, torch; print('   imports:', \
      'diffusion_course from', dc.__file__.rsplit('/', 2)[0], '| torch', torch.__version__)") || status=1
    echo "   environment $(du -sh "$dir/.venv" | cut -f1), ${secs} s from the command's start to JupyterLab's answer"
  else
    echo "   FAILED after ${secs} s; the end of its log ($dir.log):"
    tail -20 "$dir.log"
    status=1
  fi
done
exit $status
