"""`grokscale slurm`: the sbatch script it writes, and a study run through it on a real Slurm.

The unit tests read the generated script (no Slurm needed). The slow test installs Debian's
`slurm-wlm` if `slurmctld` is missing, starts a one-node Slurm (slurmctld, slurmd and munged
as root, every file in a temporary directory, its own ports), submits a tiny study with
`--nodes 1` and checks that Optuna and MLflow hold every trial. It skips, saying why, where Slurm
cannot be installed or started (not root, no apt-get, no network).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.cluster.slurm import main as slurm_main
from orchestrator.store.names import TAG_STATUS, RunStatus

from support import cli, ports
from support.cli import listing
from support.ray_cluster import Node
from support.studies import tiny_study

SLURM = [sys.executable, "-m", "orchestrator.cluster.slurm"]
# test_postgres_storage.py's tiny study with one trial per cell: two runs of about a second.
STUDY = tiny_study("tiny", trials=1, num_cpus=None)


def free_port() -> int:
    return ports.free_port("")  # free on every interface: slurmd and Ray's nodes bind them all


def write_study(where: Path, **changes) -> Path:
    return cli.write_study(where, STUDY, **changes)


# ------------------------------------------------------------------------------ the script


def dry_run(tmp_path: Path, *args: str, capsys, monkeypatch) -> tuple[Path, str, str]:
    """Run `grokscale slurm --dry-run` in tmp_path; the script's path, its text and stdout."""
    monkeypatch.chdir(tmp_path)
    code = slurm_main([str(write_study(tmp_path)), "--dry-run", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    script = tmp_path / "runs" / "tiny" / "slurm" / "job.sbatch"
    return script, script.read_text(), out


def commands(text: str) -> list[list[str]]:
    """Each line of the script that is not a comment, as argv (continuation lines joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    return [
        shlex.split(line, comments=True)
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def find(argvs: list[list[str]], *words: str) -> list[list[str]]:
    """The commands that contain `words` in that order, next to each other."""
    n = len(words)
    return [a for a in argvs if any(tuple(a[i : i + n]) == words for i in range(len(a) - n + 1))]


def test_script_starts_the_head_the_workers_and_the_driver(tmp_path, capsys, monkeypatch):
    script, text, out = dry_run(
        tmp_path,
        "--nodes",
        "3",
        "--cpus-per-node",
        "8",
        "--gpus-per-node",
        "2",
        "--time",
        "02:00:00",
        "--partition",
        "gpu",
        "--account",
        "lab42",
        "--set",
        "train.steps=200",
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert f"sbatch {script}" in out and str(script) in out
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", text, flags=re.MULTILINE))
    assert directives["nodes"] == "3" and directives["ntasks-per-node"] == "1"
    assert directives["cpus-per-task"] == "8" and directives["gpus-per-node"] == "2"
    assert directives["time"] == "02:00:00" and directives["partition"] == "gpu"
    assert directives["account"] == "lab42" and directives["job-name"] == "grokscale-tiny"
    assert directives["dependency"] == "singleton"  # a second submission waits, then resumes
    assert directives["chdir"] == str(tmp_path)
    assert directives["output"] == str(tmp_path / "runs" / "tiny" / "slurm" / "slurm-%j.out")
    assert "exclusive" not in directives

    argvs = commands(text)
    [head] = find(argvs, "ray", "start", "--head")
    assert head[:7] == ["srun", "--nodes=1", "--ntasks=1", "-w", "$head", "--cpus-per-task=8", "--gres=gpu:2"]
    assert {
        "--node-ip-address=$head_ip",
        "--port=6379",
        "--ray-client-server-port=10001",
        "--object-manager-port=8076",
        "--include-dashboard=false",
        "--num-cpus=8",
        "--num-gpus=2",
        "--block",
    } <= set(head)
    assert "--dashboard-host=127.0.0.1" in head  # what Ray keeps of it, on loopback only
    [worker] = find(argvs, "ray", "start", "--address=$head_ip:6379")
    assert worker[:5] == ["srun", "--nodes=1", "--ntasks=1", "-w", "$node"] and "--block" in worker
    assert {"--num-cpus=8", "--num-gpus=2", "--object-manager-port=8076"} <= set(worker)
    assert "--head" not in worker
    joins = find(argvs, "-m", "orchestrator.cluster.join")  # the head is up, then every node is in
    assert [j[-3:] for j in joins] == [["$head_ip:6379", n, "--timeout=300"] for n in ("1", "3")]
    [driver] = find(argvs, "grokscale", "run")
    assert driver[2:] == [
        str(tmp_path / "study.yaml"),
        "--quiet",
        "--set",
        "ray.address=$head_ip:6379",
        "--set",
        "train.steps=200",
    ]
    assert "export RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN=" in text
    assert not re.search(r"RAY_AUTH_TOKEN=[0-9a-f]{16}", text)  # made in the job, never written to disk
    assert not find(argvs, "ray", "stop")  # it would stop every Ray of this user on the node
    # Ray's files in a folder each node's step makes itself, private, under a name not known before.
    assert re.search(
        r'^ray_tmp=/tmp/gs-\$SLURM_JOB_ID-\$\(python -c "import secrets', text, flags=re.MULTILINE
    )
    assert 'umask 077 && mkdir "$ray_tmp"' in text
    assert all(
        a[a.index("bash") : a.index("bash") + 3] == ["bash", "-c", 'private_tmp && exec "$@"']
        for a in (head, worker)
    )
    [auth] = find(argvs, "-m", "orchestrator.cluster.auth_check")
    assert auth[-1] == "$head_ip:6379"
    # The order: head, wait for it, check nobody without the token gets in, workers, wait for all, driver.
    order = [argvs.index(a) for a in (head, joins[0], auth, worker, joins[1], driver)]
    assert order == sorted(order)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_without_cpus_the_nodes_are_whole_and_ports_can_move(tmp_path, capsys, monkeypatch):
    _, text, _ = dry_run(
        tmp_path,
        "--nodes",
        "1",
        "--port",
        "7000",
        "--client-port",
        "7001",
        "--object-manager-port",
        "7002",
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert "#SBATCH --exclusive" in text and "cpus-per-task" not in text
    assert "#SBATCH --gpus" not in text and "--gres" not in text
    assert "#SBATCH --partition" not in text and "#SBATCH --account" not in text
    argvs = commands(text)
    [head] = find(argvs, "ray", "start", "--head")
    # Ray counts the node's CPUs, and uses no GPU that Slurm did not hand out.
    assert "--whole" in head and [a for a in head if a.startswith("--num-")] == ["--num-gpus=0"]
    assert {"--port=7000", "--ray-client-server-port=7001", "--object-manager-port=7002"} <= set(head)
    [driver] = find(argvs, "grokscale", "run")
    assert "ray.address=$head_ip:7000" in driver


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "grid.d[0]"),  # a bad study
        (("--set", "ray.address=auto"), "ray.address"),  # the script sets it
        (("--set", "resources.gpus=1"), "resources.gpus"),  # no GPU on the nodes asked for
        (("--time", "2h"), "--time"),
        (("--nodes", "0"), "--nodes"),
        (("--port", "12000"), "--port"),  # inside Ray's worker ports
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    bad = {"grid": {**STUDY["grid"], "d": [1.5]}} if not args else {}
    path = write_study(tmp_path, **bad)
    monkeypatch.chdir(tmp_path)
    assert slurm_main([str(path), "--nodes", "1", "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was written or submitted" in err, err
    assert listing(tmp_path) == ["study.yaml"]


def test_no_sbatch_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    path = write_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    assert slurm_main([str(path), "--nodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "no `sbatch` on PATH" in err and "--dry-run" in err, err
    assert listing(tmp_path) == ["study.yaml"]


# ------------------------------------------------------------------------------ a real Slurm


def ensure_slurm_installed() -> None:
    """Debian's slurm-wlm (slurmctld, slurmd, the client commands, munge), installed once."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not installed, and installing it (apt-get) needs root")
    if not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install Debian's slurm-wlm")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{shlex.join(cmd)}` took over 15 minutes")
        if done.returncode != 0:
            pytest.skip(f"`{shlex.join(cmd)}` failed, so Slurm cannot be installed: {done.stderr[-800:]}")
    if not shutil.which("slurmctld"):
        pytest.skip("slurm-wlm installed, yet no slurmctld on PATH")


class OneNodeSlurm:
    """slurmctld + slurmd + munged for this machine alone: root, a temp dir, free ports.

    One node named after `hostname -s`, with the CPUs and memory `slurmd -C` finds. Its own munge
    socket and key (AuthInfo=socket=...), so nothing of a system-wide munge is used or touched.
    proctrack/linuxproc and task/none: no cgroups needed. No accounting daemon, so job states
    come from `scontrol show job` (MinJobAge keeps a finished job there for 10 minutes)."""

    def __init__(self) -> None:
        ensure_slurm_installed()
        if os.geteuid() != 0:
            pytest.skip("slurmd must run as root")
        self.root = Path(tempfile.mkdtemp(prefix="gs-slurm-"))
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def _config(self) -> str:
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60)
        line = next((ln for ln in node.stdout.splitlines() if ln.startswith("NodeName=")), None)
        if node.returncode != 0 or line is None:
            pytest.skip(f"`slurmd -C` could not describe this node: {node.stderr[-500:]}")
        r = self.root
        return "\n".join(
            [
                "ClusterName=grokscaletest",
                f"SlurmctldHost={self.host}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={r}/munge.socket",
                f"StateSaveLocation={r}/state",
                f"SlurmdSpoolDir={r}/spool",
                f"SlurmctldPidFile={r}/slurmctld.pid",
                f"SlurmdPidFile={r}/slurmd.pid",
                f"SlurmctldLogFile={r}/slurmctld.log",
                f"SlurmdLogFile={r}/slurmd.log",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "KillWait=5",
                "MinJobAge=600",
                # job ids (and Ray's temp dirs) unlike a past run's
                f"FirstJobId={random.randint(10_000, 900_000)}",
                f"{line.split(' UpTime=')[0]} NodeAddr=127.0.0.1 State=UNKNOWN",
                f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _spawn(self, *cmd: str) -> None:
        with open(self.root / f"{Path(cmd[0]).name}.out", "ab") as log:  # the daemon keeps its own copy
            self.procs.append(
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
                )
            )

    def start(self, timeout_s: float = 60) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir()
        self.conf.write_text(self._config())
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._spawn(
            "munged",
            "--foreground",
            "--force",
            f"--socket={self.root}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={self.root}/munged.pid",
            f"--log-file={self.root}/munged.log",
            f"--seed-file={self.root}/munged.seed",
        )
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-f", str(self.conf))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        pytest.skip(f"a one-node Slurm did not come up in {timeout_s:.0f} s:\n{self.logs()}")

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-1500:]}"
            for p in sorted(self.root.glob("*.log"))
            if p.stat().st_size
        ) + "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-800:]}" for p in sorted(self.root.glob("*.out"))
        )

    def wait_job(self, job_id: str, timeout_s: float) -> tuple[str, str]:
        """(JobState, ExitCode) once the job has ended; ("TIMEOUT_IN_TEST", "") if it has not."""
        ended = (
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "-o", "show", "job", job_id).stdout))
            if info.get("JobState") in ended:
                return info["JobState"], info.get("ExitCode", "")
            time.sleep(2)
        self.run("scancel", job_id)
        return "TIMEOUT_IN_TEST", ""

    def stop(self) -> None:
        self.run("scancel", "--full", "--partition=debug")
        for proc in reversed(self.procs):  # slurmd, slurmctld, munged: each by its own pid
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def slurm():
    cluster = OneNodeSlurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def job_processes(job_id: str) -> list[int]:
    """Processes of a Slurm job: every one started in it inherits SLURM_JOB_ID (Ray's workers and
    agents rewrite their command lines, but not their environment)."""
    marker = f"SLURM_JOB_ID={job_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def submit(slurm: OneNodeSlurm, tmp_path: Path, ports: list[int]) -> str:
    """`grokscale slurm` of the tiny study on one whole node; the job id it printed."""
    cmd = [
        *SLURM,
        str(tmp_path / "study.yaml"),
        "--nodes",
        "1",
        "--time",
        "00:20:00",
        "--port",
        str(ports[0]),
        "--client-port",
        str(ports[1]),
        "--object-manager-port",
        str(ports[2]),
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=slurm.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr + slurm.logs()
    return re.search(r"submitted job (\d+)", out.stdout).group(1)


@pytest.mark.long
@pytest.mark.slow  # a one-node Slurm, a Ray head and a driver in a job, twice: 2 to 5 minutes
def test_study_runs_and_resumes_through_sbatch_on_a_one_node_slurm(tmp_path, slurm):
    from mlflow.tracking import MlflowClient

    write_study(tmp_path)
    ports = []
    while len(ports) < 3:  # the OS's ephemeral range: clear of Ray's worker ports 10002-19999
        ports = sorted({*ports, free_port()})
    jobs = []
    try:
        # Submitted twice at once, as a user who resumes too early would: the second job waits
        # for the first (--dependency=singleton), then resumes a finished study and trains nothing.
        jobs = [submit(slurm, tmp_path, ports), submit(slurm, tmp_path, ports)]
        waiting = slurm.run("squeue", "-h", "-j", jobs[1], "-o", "%T %r").stdout.split()
        assert waiting == ["PENDING", "Dependency"], waiting
        for job, completed in zip(jobs, (2, 0)):
            state = slurm.wait_job(job, timeout_s=600)
            log = (tmp_path / "runs" / "tiny" / "slurm" / f"slurm-{job}.out").read_text()
            assert state == ("COMPLETED", "0:0"), f"job {job}: {state}\n{log[-5000:]}\n{slurm.logs()}"
            # The head came up on this node, its one node joined, the driver ran, Ray was stopped:
            # no process of the job is left.
            assert "1 node(s) in the Ray cluster" in log and "Ray stopped" in log, log[-3000:]
            assert f"tiny: {completed} completed" in log, log[-3000:]
            assert not job_processes(job)

        # Optuna: each cell's one trial COMPLETE, not run again by the resume.
        status = cli.grokscale("status", "study.yaml", "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr[-2000:]
        assert [(r["complete"], r["failed"]) for r in json.loads(status.stdout)] == [(1, 0), (1, 0)]
        # MLflow (sqlite:///mlflow.db, relative: the job ran in the submit directory): two child runs.
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert [r.data.tags[TAG_STATUS] for r in children] == [RunStatus.COMPLETED.value] * 2
    finally:
        for job in jobs:  # never leave a job's Ray behind, even when an assertion failed
            for pid in job_processes(job):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(f"/tmp/ray-gs-{job}", ignore_errors=True)


@pytest.mark.slow  # two real Ray heads, one with token authentication and one without: about a minute
@pytest.mark.parametrize("auth", [True, False])
def test_the_job_checks_that_its_ray_refuses_a_connection_without_its_token(auth, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "a" * 64} if auth else {"RAY_AUTH_MODE": "disabled"}
    )
    head = Node(port, True, tmp_path / "head.log", env)
    try:
        joined = subprocess.run(
            [sys.executable, "-m", "orchestrator.cluster.join", f"127.0.0.1:{port}", "1", "--timeout=120"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert joined.returncode == 0, joined.stderr[-2000:]
        check = subprocess.run(
            [sys.executable, "-m", "orchestrator.cluster.auth_check", f"127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        head.cleanup()
    if auth:
        assert check.returncode == 0, check.stderr[-2000:]
        assert "refuses connections without this job's token" in check.stdout
    else:
        assert check.returncode == 1 and "accepted a connection with no authentication" in check.stderr
