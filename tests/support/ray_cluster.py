"""A Ray cluster of several nodes on this machine, as the tests start one: each node is one
`ray start --block` with its own temp dir and its own ports, so its processes are exactly that
command's process tree (raylet, agents, workers) and stopping it touches no other Ray here.
`ray stop` would not do: it has no per-cluster form and kills every Ray on the machine, the one of
a test running beside on the other pytest-xdist worker too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from support.ports import free_port
from support.processes import kill_tree

BIN = Path(sys.executable).parent

# How `ray start` gives up when a raylet has not registered with the GCS within 30 s
# (ray/_private/node.py; not configurable), the head's own or the head it joins.
RAY_START_GAVE_UP = ("timed out during startup", "No node info found for head node")


class Node:
    """One `ray start --block`. Every port Ray would otherwise take at a fixed default (the
    dashboard's 8265, its agent's 52365, the client server's 10001) is a free one, so two
    clusters on one machine do not meet; `dashboard_port` gives the head a dashboard, which
    `ray job submit` needs."""

    def __init__(self, head_port: int, head: bool, log: Path, env: dict, dashboard_port: int | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="gsf", dir="/tmp")  # short: Unix socket paths are capped
        if not head:
            args = [f"--address=127.0.0.1:{head_port}"]
        elif dashboard_port is None:
            args = ["--head", f"--port={head_port}", "--include-dashboard=false"]
        else:
            args = [
                "--head",
                f"--port={head_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
            ]
        if head:
            args.append(f"--ray-client-server-port={free_port()}")
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    BIN / "ray",
                    "start",
                    "--block",
                    *args,
                    f"--dashboard-agent-listen-port={free_port()}",
                    "--num-cpus=1",
                    "--node-ip-address=127.0.0.1",
                    "--disable-usage-stats",
                    f"--temp-dir={self.temp_dir}",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        kill_tree(self.proc.pid)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def cluster_nodes(port: int, n_alive: int, env: dict, timeout: float = 120) -> dict[str, str]:
    """Wait until `n_alive` nodes are alive; node id -> its raylet socket (under its temp dir)."""
    script = f"""
import json, time, ray
ray.init(address="127.0.0.1:{port}", log_to_driver=False)
deadline = time.monotonic() + {timeout}
while True:
    alive = {{n["NodeID"]: n["RayletSocketName"] for n in ray.nodes() if n["Alive"]}}
    if len(alive) == {n_alive} or time.monotonic() > deadline:
        print(json.dumps(alive))
        break
    time.sleep(0.5)
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    alive = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(alive) == n_alive, f"{len(alive)} nodes alive, expected {n_alive}"
    return alive


def start_cluster(
    port: int, env: dict, logs: Path, tries: int = 3, dashboard_port: int | None = None
) -> tuple[Node, Node, dict[str, str]]:
    """A head and a second node, both alive: (head, node, node id -> raylet socket). A loaded
    machine can take longer than Ray's start-up allows itself: a start that gave up so is made
    again from scratch (before any fault: not a fault's moment); any other failure fails."""
    attempt = 0
    while True:
        attempt += 1
        started: list[Node] = []
        try:
            started.append(Node(port, True, logs / f"head{attempt}.log", env, dashboard_port))
            started.append(Node(port, False, logs / f"node{attempt}.log", env))
            return started[0], started[1], cluster_nodes(port, 2, env)
        except AssertionError:
            for n in started:
                n.cleanup()
            said = "".join(f.read_text() for f in logs.glob(f"*{attempt}.log"))
            if attempt == tries or not any(m in said for m in RAY_START_GAVE_UP):
                raise
            print(f"\nRay's start-up gave up (try {attempt}): the cluster is started again")
