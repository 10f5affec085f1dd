#!/usr/bin/env bash
# Create bench/peers/.venv-flower with Flower 1.42.0's Ray simulation, for bench/round.py --peer flower.
#
# flwr 1.42.0 declares certifi>=2026.10.19, newer than any certifi this machine's package index
# has, so pip cannot resolve flwr[simulation] as a whole. We install its declared requirements
# (read from the wheel's own METADATA, certifi left unpinned) plus the simulation extra's
# ray==2.55.1, torch and torchvision for the workload and psutil for memory sampling, and then
# flwr itself with --no-deps. Finally we check that flwr imports and that a tiny simulation runs.
#
#   bash bench/peers/setup_flower.sh          # idempotent; PYTHON=python3.11 to choose the interpreter
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-flower"
PY="${PYTHON:-python3}"
FLWR_VERSION=1.42.0
# The same torch build as fedactors' own venv, so that memory and speed compare like for like.
MAIN_PY="$HERE/../../.venv/bin/python"
if [ -x "$MAIN_PY" ]; then
  TORCH_VERSION="$("$MAIN_PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  TORCHVISION_VERSION="$("$MAIN_PY" -c 'import torchvision; print(torchvision.__version__.split("+")[0])')"
else
  TORCH_VERSION=2.14.1
  TORCHVISION_VERSION=0.29.1
fi
RAY_VERSION=2.55.1  # what flwr[simulation]==1.42.0 pins

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip >/dev/null

WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
"${PIP[@]}" download "flwr==$FLWR_VERSION" --no-deps -d "$WHEELS" >/dev/null

# flwr's own requirements (no extras), with the certifi floor dropped.
"$VENV/bin/python" - "$WHEELS"/flwr-*.whl >"$WHEELS/requirements.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = line[len("Requires-Dist: "):]
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
        print("certifi" if name.lower() == "certifi" else req)
PY
echo "flwr $FLWR_VERSION requirements (certifi unpinned):"
sed 's/^/  /' "$WHEELS/requirements.txt"

"${PIP[@]}" install -r "$WHEELS/requirements.txt" \
    "ray==$RAY_VERSION" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" psutil
"${PIP[@]}" install --no-deps "$WHEELS"/flwr-*.whl

"$VENV/bin/python" -c "import flwr, ray, torch; print('flwr', flwr.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
# A two-client, one-round simulation with a trivial model: proves the Ray simulation path works.
"$VENV/bin/python" "$HERE/flower_round.py" --selftest
