"""`python -m orchestrator.cluster.auth_check HOST:PORT`: exit 0 only if the Ray cluster at
HOST:PORT refuses a connection that lacks this job's token.

A Slurm job's Ray (orchestrator/cluster/slurm.sbatch) listens on the cluster's network. With token
authentication (Ray >= 2.52, RAY_AUTH_MODE=token) nobody without the job's token can join it or
submit work to it; without it, anyone on the network can run code as the job's user. The job
checks this at its start, before the study runs, by trying to connect twice from a fresh process:
with no authentication at all, and with a wrong token. Either connection succeeding stops the job.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

CONNECT_TIMEOUT_S = 60
MIN_RAY = (2, 52, 0)  # the first Ray with token authentication (docs.ray.io: ray-security/token-auth)
ATTEMPT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('connected')"


def ray_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(p) for p in version("ray").split(".")[:3] if p.isdigit())


def accepted(address: str, env: dict[str, str]) -> bool:
    """Whether a fresh process with this environment connects to the Ray at `address`."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", ATTEMPT, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=CONNECT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False  # it never got in
    return done.returncode == 0 and "connected" in done.stdout


def intruders(address: str) -> list[str]:
    """The connections without this job's token that the cluster accepted (empty: none)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base["RAY_ADDRESS"] = ""
    tries = {
        "no authentication": {**base, "RAY_AUTH_MODE": "disabled"},
        "a wrong token": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
    }
    return [what for what, env in tries.items() if accepted(address, env)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m orchestrator.cluster.auth_check HOST:PORT", file=sys.stderr)
        return 2
    let_in = intruders(argv[0])
    if let_in:
        print(
            f"grokscale: the Ray at {argv[0]} accepted a connection with {' and with '.join(let_in)}: anyone "
            f"on the network could run code in this job; stopping (is RAY_AUTH_MODE=token honoured? Ray >= "
            f"{'.'.join(map(str, MIN_RAY))} is needed)",
            file=sys.stderr,
        )
        return 1
    print(f"grokscale: the Ray at {argv[0]} refuses connections without this job's token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
