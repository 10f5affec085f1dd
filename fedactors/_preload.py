"""Imported by each Python worker of a local Ray that fedactors starts, as soon as the worker is up.

A local cluster starts one idle worker per CPU while ray.init is still waiting for its own
daemons; client hosts are then placed in those workers. Importing torch there (2-3 s) overlaps
it with the rest of the start-up instead of following it. The coordinator's worker is started
with FEDACTORS_ROLE=coordinator and skips it: it never uses torch, which would cost it about
300 MiB (experiment._start_ray names this module in RAY_preload_python_modules).
"""

import os

if os.environ.get("FEDACTORS_ROLE") != "coordinator":
    import torch  # noqa: F401
