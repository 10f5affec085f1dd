#!/bin/sh
# Issue 26: the paper's 2NN on its pathological non-IID MNIST (100 clients, E=1, B=10, C=0.1) on clients of
# lognormal:1 speeds: synchronous FedAvg; with a 20 s deadline and 30% over-selection; FedBuff (C=20, K=10);
# FedAsync (C=10); and the deadline run again on a trace whose clients come and go.
set -e
out=${1:-runs/uneven-2nn}
mkdir -p $out
common="--task mnist-2nn --partition noniid --epochs 1 --batch-size 10 --frac 0.1 --target 0.97 --client-speed lognormal:1 -q"
python3 - "$out/trace.csv" <<'PY'
import sys
import numpy as np
# Each client online 20 minutes of every hour from a phase of its own (seeded), 48 hours of windows.
rng = np.random.default_rng(26)
with open(sys.argv[1], "w") as f:
    f.write("client,online_from,online_until\n")
    for c in range(100):
        phase = rng.uniform(0, 3600)
        for h in range(48):
            start = phase + 3600 * h
            f.write(f"{c},{start:.1f},{start + 1200:.1f}\n")
        if phase > 2400:  # the window that straddles the start
            f.write(f"{c},0,{phase - 2400:.1f}\n")
PY
fedactors run $common --rounds 250 --eval-every 5 --out $out/sync --run-id sync || true
fedactors run $common --rounds 250 --eval-every 5 --deadline 20 --over-select 0.3 --out $out/deadline20-over0.3 --run-id d20 || true
fedactors run $common --rounds 250 --eval-every 5 --strategy fedbuff --concurrency 20 --buffer 10 --out $out/fedbuff-c20-k10 --run-id fedbuff || true
fedactors run $common --rounds 2500 --eval-every 50 --checkpoint-every 50 --strategy fedasync --concurrency 10 --out $out/fedasync-c10 --run-id fedasync || true
fedactors run $common --rounds 250 --eval-every 5 --deadline 20 --over-select 0.3 --client-trace $out/trace.csv --out $out/trace-deadline20-over0.3 --run-id trace || true
