"""Wait until a Ray cluster has N live nodes: what the sbatch script of `grokscale slurm` runs
between starting Ray on the nodes and starting the driver, which sizes its slots to the cluster
it finds. `python -m orchestrator.cluster.join HOST:PORT N --timeout=300`; exit 1 on timeout."""

from __future__ import annotations

import argparse
import socket
import sys
import time


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def wait_for_nodes(address: str, n_nodes: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Block until `n_nodes` nodes are alive in the cluster at `address`; return how many are.
    Raises TimeoutError, saying how many joined, once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    # ray.init would wait for a head that is still starting, but for a time of Ray's choosing.
    while not _listening(host, int(port)):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"nothing answers at {address} after {timeout_s:.0f} s: the Ray head did not "
                f"start (see `ray start --head` above)"
            )
        time.sleep(poll_s)
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    try:
        while True:
            alive = sum(1 for node in ray.nodes() if node["Alive"])
            if alive >= n_nodes:
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{alive} of {n_nodes} nodes joined the Ray head at {address} in "
                    f"{timeout_s:.0f} s (see each node's `ray start` above)"
                )
            time.sleep(poll_s)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.cluster.join", description=__doc__)
    parser.add_argument("address", help="the Ray head's HOST:PORT")
    parser.add_argument("nodes", type=int, help="how many nodes must be alive")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait (default 300)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        alive = wait_for_nodes(args.address, args.nodes, args.timeout)
    except TimeoutError as err:
        print(f"grokscale: {err}", file=sys.stderr)
        return 1
    print(
        f"grokscale: {alive} node(s) in the Ray cluster at {args.address} after "
        f"{time.monotonic() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
