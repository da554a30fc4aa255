"""The webhook under ``wrk`` (Debian's package): a closed loop of keep-alive connections posting one
signed text body as fast as the server answers, the way the issue that set the webhook target measured
it. Costs far less CPU than the Python generator, so the server, not the generator, is what saturates.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from wacrm.whatsapp import signature

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def ensure() -> str | None:
    """The wrk binary, installed with apt (scripts/apt-tool.sh) when missing and we may; None if not."""
    found = shutil.which("wrk")
    if found is None:
        script = Path(__file__).resolve().parents[1] / "scripts" / "apt-tool.sh"
        subprocess.run(["sh", str(script), "wrk", "wrk", "webhook benchmark"], capture_output=True, timeout=600)
        found = shutil.which("wrk")
    return found


def script(body: bytes, secret: str, path: Path) -> Path:
    """A Lua script that posts ``body`` signed with ``secret``."""
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {_lua_string(body.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-Hub-Signature-256"] = "{signature.sign(secret, body)}"\n')
    return path


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def parse(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (seconds), non-2xx answers and socket errors from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    lat = {p: _seconds(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    return {"rps": float(rps.group(1)) if rps else 0.0, "requests": int(total.group(1)) if total else 0,
            "latency_s": {"p50": lat.get("50"), "p90": lat.get("90"), "p99": lat.get("99")},
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def _seconds(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run(binary: str, url: str, lua: Path, connections: int, seconds: float, log: Path) -> dict[str, Any]:
    """One closed-loop run of ``seconds`` with one wrk thread; its parsed result."""
    cmd = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    with log.open("a") as f:
        f.write(" ".join(cmd) + "\n" + done.stdout + done.stderr + "\n")
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed (code {done.returncode}): {done.stderr.strip()[:300]}")
    return {"connections": connections, "seconds": seconds, **parse(done.stdout)}
