"""`grokscale slurm STUDY --nodes N ...`: run a study on a Slurm allocation, with Ray.

Writes an sbatch script beside the study (<workdir>/slurm/job.sbatch, default
runs/<name>/slurm/job.sbatch) from the `slurm.sbatch` template next to this file, then submits
it with `sbatch` (`--dry-run`: only writes it). The script starts a Ray head on the allocation's
first node and a Ray worker on every other one through `srun`, waits until all have joined, runs
`grokscale run STUDY --set ray.address=<head>:<port>` on the head and stops Ray when it ends.
The study is checked first, as `grokscale run` checks it: on any problem nothing is written or
submitted and the exit code is 2. Resume = submit again. docs/slurm.md walks through it.

The template is a file, not a string in this module, so it reads (and lints) as the shell script
it is, and a cluster without this command can still copy and fill it by hand.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.sbatch")
# Slurm's --time forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
NAME = re.compile(r"^[A-Za-z0-9_.,+-]+$")  # partition and account names (a comma lists several)
# docs/cluster.md's ports: the GCS, Ray's client server, the object manager. Ray's workers use
# 10002-19999 unless told otherwise, so a port moved with the options below must stay outside it.
GCS_PORT, CLIENT_PORT, OBJECT_PORT = 6379, 10001, 8076
WORKER_PORTS = range(10002, 20000)
JOIN_TIMEOUT_S = 300  # for every node's Ray to join the head; a node that never does fails the job


@dataclass(frozen=True)
class SlurmJob:
    """What is asked of Slurm and of Ray: the allocation, and the head's ports."""

    nodes: int
    cpus_per_node: int | None = None  # None: whole nodes (--exclusive), Ray counts their CPUs
    gpus_per_node: int = 0
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    port: int = GCS_PORT
    client_port: int = CLIENT_PORT
    object_manager_port: int = OBJECT_PORT

    def problems(self) -> list[str]:
        out = [f"--nodes: must be at least 1, got {self.nodes}"] if self.nodes < 1 else []
        if self.cpus_per_node is not None and self.cpus_per_node < 1:
            out.append(f"--cpus-per-node: must be at least 1, got {self.cpus_per_node}")
        if self.gpus_per_node < 0:
            out.append(f"--gpus-per-node: must be 0 or more, got {self.gpus_per_node}")
        if self.time is not None and not TIME.match(self.time):
            out.append(f"--time: {self.time!r} is not a Slurm time limit (HH:MM:SS, D-HH:MM:SS or minutes)")
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not NAME.match(value):
                out.append(f"{flag}: {value!r} is not a Slurm name (letters, digits, _ . , + -)")
        ports = {
            "--port": self.port,
            "--client-port": self.client_port,
            "--object-manager-port": self.object_manager_port,
        }
        for flag, port in ports.items():
            if not 1024 <= port <= 65535 or port in WORKER_PORTS:
                out.append(f"{flag}: {port} must be in 1024-65535 and outside Ray's worker ports 10002-19999")
        if len(set(ports.values())) < len(ports):
            out.append(
                f"--port, --client-port and --object-manager-port must differ, got {sorted(ports.values())}"
            )
        return out

    def sbatch_lines(self, name: str, cwd: Path, out_dir: Path) -> list[str]:
        lines = [f"--job-name=grokscale-{name}", f"--nodes={self.nodes}", "--ntasks-per-node=1"]
        lines.append(f"--cpus-per-task={self.cpus_per_node}" if self.cpus_per_node else "--exclusive")
        lines += [f"--gpus-per-node={self.gpus_per_node}"] if self.gpus_per_node else []
        lines += [
            f"--{k}={v}"
            for k, v in (("time", self.time), ("partition", self.partition), ("account", self.account))
            if v is not None
        ]
        lines += [f"--chdir={cwd}", f"--output={out_dir / 'slurm-%j.out'}", "--dependency=singleton"]
        return [f"#SBATCH {line}" for line in lines]

    def step_resources(self) -> str:
        """What each srun step (one `ray start` per node) takes: its CPUs and GPUs, or the node."""
        if self.cpus_per_node is None:
            return "--whole" + (f" --gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else "")
        return f"--cpus-per-task={self.cpus_per_node}" + (
            f" --gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else ""
        )

    def ray_resources(self) -> str:
        """What each node's Ray offers; without --cpus-per-node Ray counts the whole node's CPUs."""
        return " ".join(
            ([f"--num-cpus={self.cpus_per_node}"] if self.cpus_per_node else [])
            + [f"--num-gpus={self.gpus_per_node}"]
        )


def script_path(study, cwd: Path) -> Path:
    """runs/<name>/slurm/job.sbatch, or under the study's own workdir; absolute."""
    return cwd / study.workdir_path / "slurm" / "job.sbatch"


def render(study, study_path: Path, job: SlurmJob, sets: list[str], cwd: Path) -> str:
    """The sbatch script: the template with this study's paths, options and ports filled in."""
    out_dir = script_path(study, cwd).parent
    values = {
        "SBATCH": "\n".join(job.sbatch_lines(study.name, cwd, out_dir)),
        "VENV_BIN": shlex.quote(str(Path(sys.executable).parent)),
        "STUDY": shlex.quote(str(study_path)),
        "SETS": "".join(f" --set {shlex.quote(s)}" for s in sets),
        "NODES": str(job.nodes),
        "GCS_PORT": str(job.port),
        "CLIENT_PORT": str(job.client_port),
        "OBJECT_PORT": str(job.object_manager_port),
        "JOIN_TIMEOUT": str(JOIN_TIMEOUT_S),
        "STEP_RESOURCES": job.step_resources(),
        "RAY_RESOURCES": job.ray_resources(),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    assert not left, f"{TEMPLATE.name}: placeholders with no value: {left}"
    return text


def check(study_path: str, sets: list[str], job: SlurmJob, cwd: Path):
    """The study as `grokscale run` will load it, checked as it checks it, against one node of
    the allocation (a trial runs on one node). Raises StudyError listing every problem."""
    from orchestrator.cluster.auth_check import MIN_RAY, ray_version
    from orchestrator.study import StudyError, load_study
    from orchestrator.study.grid import build_cells
    from orchestrator.study.preflight import check_preflight

    problems = job.problems()
    if ray_version() < MIN_RAY:  # the job's Ray would listen on the network with no authentication
        problems.append(
            f"ray {'.'.join(map(str, ray_version()))} has no token authentication; the job's Ray would "
            f"accept anyone on the cluster's network: install ray >= {'.'.join(map(str, MIN_RAY))}"
        )
    problems += [
        f"--set {s}: the script sets ray.address to the allocation's head; leave it out"
        for s in sets
        if s.partition("=")[0].strip() == "ray.address"
    ]
    problems += [
        f"{p} has white space, which #SBATCH lines cannot hold"
        for p in (cwd, Path(study_path))
        if re.search(r"\s", str(p))
    ]
    study = load_study(study_path, sets)  # raises StudyError with every problem of the study
    cells = build_cells(study)
    # The login node is not the cluster: check the study as it will run, joining the allocation.
    local = study.model_copy(update={"ray": study.ray.model_copy(update={"address": None})})
    node = {"CPU": float(job.cpus_per_node or math.inf), "GPU": float(job.gpus_per_node)}
    problems += check_preflight(local, cells, cluster=node)
    if problems:
        raise StudyError(problems)
    return study


def submit(path: Path) -> tuple[str | None, str]:
    """sbatch the script: (job id, "") or (None, why sbatch refused it)."""
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, (done.stderr or done.stdout).strip()
    return done.stdout.strip().split(";")[0], ""


def add_slurm_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "slurm",
        help="run a study on a Slurm allocation: write and submit an sbatch script",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", help="the study's YAML file")
    p.add_argument("--nodes", type=int, required=True, help="nodes to allocate; Ray's head runs on the first")
    p.add_argument(
        "--cpus-per-node", type=int, help="CPUs per node for Ray (default: whole nodes, --exclusive)"
    )
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node for Ray (default 0)")
    p.add_argument("--time", help="the job's time limit, HH:MM:SS or D-HH:MM:SS (default: the partition's)")
    p.add_argument("--partition", help="the Slurm partition (default: the cluster's default)")
    p.add_argument("--account", help="the Slurm account to charge")
    p.add_argument("--port", type=int, default=GCS_PORT, help=f"the Ray head's GCS port (default {GCS_PORT})")
    p.add_argument(
        "--client-port",
        type=int,
        default=CLIENT_PORT,
        help=f"Ray's client server port on the head (default {CLIENT_PORT})",
    )
    p.add_argument(
        "--object-manager-port",
        type=int,
        default=OBJECT_PORT,
        help=f"Ray's object manager port on every node (default {OBJECT_PORT})",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="write the script and print the sbatch command; submit nothing"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a study field, for the check and for the job's `grokscale run` (repeatable)",
    )
    return p


def cmd_slurm(args: argparse.Namespace) -> int:
    from orchestrator.study import StudyError

    job = SlurmJob(
        nodes=args.nodes,
        cpus_per_node=args.cpus_per_node,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        partition=args.partition,
        account=args.account,
        port=args.port,
        client_port=args.client_port,
        object_manager_port=args.object_manager_port,
    )
    cwd = Path.cwd()
    problems = (
        []
        if args.dry_run or shutil.which("sbatch")
        else [
            "no `sbatch` on PATH: run this on a Slurm login node, or pass --dry-run to only write the script"
        ]
    )
    try:
        study = check(args.study, list(args.set), job, cwd)
    except StudyError as err:
        problems += err.problems
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{args.study}: {len(problems)} problem(s); nothing was written or submitted", file=sys.stderr)
        return 2
    path = script_path(study, cwd)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(study, Path(args.study).absolute(), job, list(args.set), cwd))
    if args.dry_run:
        print(f"wrote {path}\nsubmit it with: sbatch {path}")
        return 0
    job_id, why = submit(path)
    if job_id is None:
        print(f"error: sbatch refused {path}: {why}", file=sys.stderr)
        return 2
    print(
        f"submitted job {job_id}: {path}\n"
        f"  output: {path.parent / f'slurm-{job_id}.out'}\n"
        f"  watch:  squeue -j {job_id}\n"
        f"  resume: run this command again (it waits for any job of this study still running)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grokscale")
    add_slurm_parser(parser.add_subparsers(dest="command", required=True))
    return cmd_slurm(parser.parse_args(["slurm", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
