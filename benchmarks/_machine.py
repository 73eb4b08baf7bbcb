"""What every benchmark records about the machine it ran on (results are only comparable on the same machine)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any


def machine_info(threads: int) -> dict[str, Any]:
    """Command line, versions, CPU model/count, platform and the load average at the start."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        # thread limits set in the environment (they bind the subprocesses a benchmark starts, too)
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }


def save_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON atomically, adding the load average at the end to ``result["machine"]`` (a busy
    machine at the start or the end says the timings are not comparable)."""
    import json

    from fedpeft.fileio import atomic_write_text

    result.setdefault("machine", {})["load_average_end"] = os.getloadavg()
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
