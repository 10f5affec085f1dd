#!/bin/sh
# Issue 26: the MNIST CNN (IID, E=1, B=10, C=0.1) on clients of lognormal:1 speeds, synchronous FedAvg,
# synchronous with 30% over-selection, and FedBuff (20 clients at once, an update every 10 arrivals).
set -e
common="--partition iid --epochs 1 --batch-size 10 --frac 0.1 --rounds 60 --eval-every 2 --target 0.97 --client-speed lognormal:1 -q"
out=${1:-runs/uneven}
fedactors run $common --out $out/sync --run-id sync || true
fedactors run $common --over-select 0.3 --out $out/sync-over0.3 --run-id sync-over0.3 || true
fedactors run $common --strategy fedbuff --concurrency 20 --buffer 10 --out $out/fedbuff-c20-k10 --run-id fedbuff-c20-k10 || true
