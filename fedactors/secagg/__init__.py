"""Secure aggregation (SecAgg, SecAgg+) whose unmasked sum is ExactSum's, so the round's result is FedAvg's bytes.

shamir: t-of-k secret sharing over GF(2^31 - 1). graph: the neighbour graph and its (k, t)
checks. protocol: a client's side and the server's (keys, shares, masks, unmasking). simulate:
a round of them in one process. costs: bytes per client and compute seconds. stage: the round
loop's side (--secure-aggregation: what it composes with, a round's k and t, the coordinator's
SecureRound and the MaskJob a host masks by). No Ray here.
"""

from fedactors.secagg.costs import (
    ClientBytes,
    Work,
    calibrate,
    client_bytes,
    client_work,
    estimate_seconds,
    server_work,
)
from fedactors.secagg.graph import check_params, neighbour_graph, secagg_plus_params
from fedactors.secagg.protocol import (
    MaskStream,
    RoundSpec,
    SecAggClient,
    SecAggError,
    SecAggServer,
    encode,
    secret_from_seed,
)
from fedactors.secagg.simulate import Transcript, simulate_round

__all__ = [
    "ClientBytes", "MaskStream", "RoundSpec", "SecAggClient", "SecAggError", "SecAggServer", "Transcript", "Work",
    "calibrate", "check_params", "client_bytes", "client_work", "encode", "estimate_seconds", "neighbour_graph",
    "secagg_plus_params", "secret_from_seed", "server_work", "simulate_round",
]
