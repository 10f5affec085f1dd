"""Nothing a local run starts can be reached from the network, and what listens on loopback wants Ray's token."""

import ipaddress
import os
import subprocess
import sys
import time

import psutil
import pytest

from conftest import ARGS, EXE, rounds_done

pytestmark = pytest.mark.slow


PROBE = """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
    print("accepted")
except AuthenticationError:
    print("refused")
except Exception as exc:
    print("other", type(exc).__name__)
"""


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (ip.ipv4_mapped or ip).is_loopback if ip.version == 6 else ip.is_loopback


def _listening(tree: list[psutil.Process]) -> dict[int, list[tuple[str, int, str]]]:
    """pid -> (address, port, kind) of every listening TCP socket and bound UDP socket of `tree`."""
    found = {}
    for p in tree:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[p.pid] = [(c.laddr.ip, c.laddr.port, name) for c in conns
                        if c.status == psutil.CONN_LISTEN or (c.type == 2 and c.laddr)]  # 2: SOCK_DGRAM
    return found


def test_a_local_run_listens_on_loopback_only_and_its_cluster_refuses_a_client_without_the_token(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # conftest keeps the tests' own Rays on loopback; not this one
    no_token = {**env, "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([EXE, "run", *ARGS, "--rounds", "5", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while rounds_done(out) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        everything = [s for socks in _listening(tree).values() for s in socks]
        # Loopback is open to every local user: the cluster must want Ray's token too. Ask its GCS without one.
        gcs_ports = [port for _, port, name in everything if name == "gcs_server"]
        answers = [subprocess.run([sys.executable, "-c", PROBE, f"127.0.0.1:{port}"], capture_output=True, text=True,
                                  env=no_token, timeout=60).stdout.strip() for port in gcs_ports]
        still_running = proc.poll() is None
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    names = {name for _, _, name in everything}
    assert {"gcs_server", "raylet"} <= names and len(everything) >= 6, everything  # the run's servers were seen
    exposed = [s for s in everything if not _loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert still_running and "refused" in answers and "accepted" not in answers, answers
