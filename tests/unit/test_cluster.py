"""cluster.yaml is a config Ray's cluster launcher accepts, and it exposes nothing to the internet.

Validation is Ray's own: `prepare_config` (merge with the provider's defaults.yaml, as `ray up`
does) then `validate_config` (ray/autoscaler/ray-schema.json via jsonschema, plus Ray's extra
checks). That is everything `ray up` checks before it first calls the cloud. Each safety check is
a function, and each one is also run on a config it must reject, so a check that can no longer
fail shows up as a failing test.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.providers import _get_default_config
from ray.autoscaler._private.util import prepare_config, validate_config

from support.cli import REPO

CLUSTER_YAML = REPO / "cluster.yaml"
DOCS = REPO / "docs" / "cluster.md"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
WORLD = ("0.0.0.0/0", "::/0")


def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared(config: dict) -> dict:
    """What `ray up` works from: the file merged with Ray's defaults for its provider."""
    return prepare_config(copy.deepcopy(config))


def validate(config: dict) -> None:
    validate_config(prepared(config))


# ---------------------------------------------------------------- Ray's own validation


def test_config_passes_rays_validation():
    validate(raw())


def _typo_top_level(c):
    c["head_start_ray_command"] = c.pop("head_start_ray_commands")


def _setup_commands_in_node_type(c):  # an easy mistake: only worker_setup_commands is per type
    c["available_node_types"]["cpu_worker"]["setup_commands"] = ["true"]


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _missing_resources(c):
    del c["available_node_types"]["gpu_worker"]["resources"]


def _unknown_head_type(c):
    c["head_node_type"] = "no_such_type"


def _min_workers_over_global_max(c):
    c["available_node_types"]["cpu_worker"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "breakage",
    [
        _typo_top_level,
        _setup_commands_in_node_type,
        _fractional_gpu_resource,
        _missing_resources,
        _unknown_head_type,
        _min_workers_over_global_max,
    ],
)
def test_validation_rejects_a_broken_copy(breakage):
    import jsonschema

    config = raw()
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(config)


# ---------------------------------------------------------------- dashboard and MLflow on loopback


def shell_commands(text: str) -> list[list[str]]:
    """Each simple command in a shell line, as argv (split at ; && || | and parentheses)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out, cur = [], []
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    return out + ([cur] if cur else [])


def all_commands(text: str) -> list[list[str]]:
    """shell_commands, also inside quoted arguments (ray exec '...', bash -c '...', tmux)."""
    out = []
    for argv in shell_commands(text):
        while argv and (argv[0] in ("nohup", "sudo", "exec", "env", "time") or "=" in argv[0]):
            argv = argv[1:]  # nohup mlflow server ..., env X=1 ray start ... -> the command itself
        out.append(argv)
        for arg in argv:
            if any(ch.isspace() for ch in arg):
                out += all_commands(arg)
    return out


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def head_starts(lines: list[str]) -> list[list[str]]:
    return [
        argv
        for line in lines
        for argv in all_commands(line)
        if argv[:2] == ["ray", "start"] and "--head" in argv
    ]


def dashboard_problems(config: dict) -> list[str]:
    starts = head_starts(prepared(config)["head_start_ray_commands"])
    if not starts:
        return ["no `ray start --head` in head_start_ray_commands"]
    return [
        f"dashboard host {option(a, '--dashboard-host')!r} in {shlex.join(a)}"
        for a in starts
        if option(a, "--dashboard-host") != "127.0.0.1"
    ]


def test_dashboard_bound_to_loopback_on_the_head():
    assert dashboard_problems(raw()) == []


def test_dashboard_check_can_fail():
    # Ray's default head command binds the dashboard to 0.0.0.0: dropping our
    # head_start_ray_commands would silently bring it back.
    config = raw()
    del config["head_start_ray_commands"]
    assert "--dashboard-host=0.0.0.0" in " ".join(
        _get_default_config(config["provider"])["head_start_ray_commands"]
    )
    assert dashboard_problems(config)
    config = raw()
    config["head_start_ray_commands"] = [
        c.replace("--dashboard-host=127.0.0.1", "") for c in config["head_start_ray_commands"]
    ]
    assert dashboard_problems(config)


def doc_command_lines() -> list[str]:
    """The docs' shell commands: code blocks and inline code, continuation lines joined."""
    text = DOCS.read_text()
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()] + inline


def mlflow_servers(lines: list[str]) -> list[list[str]]:
    return [
        argv
        for line in lines
        for argv in all_commands(line)
        if argv[:2] in (["mlflow", "server"], ["mlflow", "ui"])
    ]


def servers_not_on_loopback(lines: list[str]) -> list[str]:
    bad = [shlex.join(a) for a in mlflow_servers(lines) if option(a, "--host") != "127.0.0.1"]
    bad += [shlex.join(a) for a in head_starts(lines) if option(a, "--dashboard-host") != "127.0.0.1"]
    return bad


def test_docs_start_mlflow_and_ray_on_loopback_only():
    lines = doc_command_lines()
    mentioned = sum(line.count("mlflow server") + line.count("mlflow ui") for line in lines)
    assert mentioned and len(mlflow_servers(lines)) == mentioned, (
        "an MLflow command in the docs was not parsed"
    )
    assert servers_not_on_loopback(lines) == []


def test_loopback_check_of_the_docs_can_fail():
    assert servers_not_on_loopback(["ray exec c.yaml --tmux 'mlflow server --port 5000'"])
    assert servers_not_on_loopback(["nohup mlflow server --host 0.0.0.0 --port 5000 &"])
    assert servers_not_on_loopback(["ulimit -n 65536; ray start --head --dashboard-host=0.0.0.0"])
    assert servers_not_on_loopback(["ray exec c.yaml 'env A=1 ray start --head --port=6379'"])
    assert not servers_not_on_loopback(["ray exec c.yaml --tmux 'mlflow server --host 127.0.0.1'"])


# ---------------------------------------------------------------- no ingress from the world


def walk(node, path="config"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, node


def ingress_problems(config: dict) -> list[str]:
    full = prepared(config)
    problems = [
        f"{path}: {value}"
        for path, value in walk(full)
        if isinstance(value, str) and any(w in value for w in WORLD)
    ]
    for path, value in walk(full):
        if path.rsplit(".", 1)[-1] in ("CidrIp", "CidrIpv6") and not ipaddress.ip_network(value).is_private:
            problems.append(f"{path}: {value} is not a private range")
    # A node type without SecurityGroupIds makes Ray create a group that allows SSH from
    # 0.0.0.0/0 (ray/autoscaler/_private/aws/config.py, _create_default_ssh_inbound_rules).
    for name, node_type in full["available_node_types"].items():
        if not node_type["node_config"].get("SecurityGroupIds"):
            problems.append(
                f"available_node_types.{name}: no SecurityGroupIds, Ray would open SSH to 0.0.0.0/0"
            )
    return problems


def test_no_ingress_open_to_the_world():
    assert ingress_problems(raw()) == []


@pytest.mark.parametrize(
    "rule",
    [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "8.8.0.0/16"}]},
    ],
)
def test_ingress_check_rejects_a_world_rule(rule):
    config = raw()
    config["provider"]["security_group"] = {"GroupName": "grokscale", "IpPermissions": [rule]}
    validate(config)  # Ray accepts it: the schema says nothing about who may connect
    assert ingress_problems(config)


def test_ingress_check_rejects_a_node_type_without_its_own_group():
    config = raw()
    del config["available_node_types"]["gpu_worker"]["node_config"]["SecurityGroupIds"]
    assert ingress_problems(config)


def test_nodes_use_private_ips():
    assert raw()["provider"].get("use_internal_ips") is True


# ---------------------------------------------------------------- what each node installs


def effective_setup(config: dict) -> dict[str, list[str]]:
    """Node type -> the setup commands Ray runs on it: the head gets setup_commands +
    head_setup_commands; a worker type's own worker_setup_commands replace the global ones."""
    full = prepared(config)
    out = {}
    for name, node_type in full["available_node_types"].items():
        if name == full["head_node_type"]:
            out[name] = full["head_setup_commands"]
        else:
            out[name] = node_type.get("worker_setup_commands", full["worker_setup_commands"])
    return out


def pip_installs(line: str) -> list[dict]:
    """Each `pip install` in a shell line: its requirements, editables and index URL."""
    found = []
    for argv in shell_commands(line):
        if "pip" not in argv and not any(a.endswith("/pip") for a in argv):
            continue
        i = next((k for k, a in enumerate(argv) if a == "install"), None)
        if i is None:
            continue
        reqs, editables, index = [], [], None
        args = iter(argv[i + 1 :])
        for a in args:
            if a in ("-e", "--editable"):
                editables.append(next(args))
            elif a in ("-i", "--index-url"):
                index = next(args)
            elif a.startswith("--index-url="):
                index = a.split("=", 1)[1]
            elif a in ("--extra-index-url", "-c", "-r", "--constraint", "--requirement"):
                next(args)
            elif not a.startswith("-"):
                reqs.append(a)
        found.append({"reqs": reqs, "editables": editables, "index": index})
    return found


def has_gpu(node_type: dict) -> bool:
    return node_type.get("resources", {}).get("GPU", 0) > 0


def setup_problems(config: dict) -> list[str]:
    import ray

    full = prepared(config)
    mounts = {Path(remote).as_posix(): local for remote, local in full["file_mounts"].items()}
    problems = []
    for name, commands in effective_setup(config).items():
        installs = [(k, p) for k, line in enumerate(commands) for p in pip_installs(line)]
        torch = [(k, p) for k, p in installs if any(r.startswith("torch==") for r in p["reqs"])]
        package = [(k, p) for k, p in installs if p["editables"]]
        if not torch:
            problems.append(f"{name}: installs no pinned torch")
            continue
        k_torch, p_torch = torch[0]
        pin = next(r for r in p_torch["reqs"] if r.startswith("torch=="))
        if pin != "torch==2.13.0":
            problems.append(f"{name}: installs {pin}, not torch==2.13.0")
        if not has_gpu(full["available_node_types"][name]) and p_torch["index"] != CPU_TORCH_INDEX:
            problems.append(f"{name}: CPU node gets torch from {p_torch['index'] or 'PyPI (the CUDA build)'}")
        if not package:
            problems.append(f"{name}: does not `pip install -e` the package")
            continue
        k_pkg, p_pkg = package[0]
        if k_pkg <= k_torch:
            problems.append(f"{name}: installs the package before torch, so pip picks the torch")
        for target in p_pkg["editables"]:
            local = mounts.get(target)
            if (
                local is None
                or not (REPO / local / "pyproject.toml").is_file()
                or tomllib.loads((REPO / local / "pyproject.toml").read_text())["project"]["name"]
                != "grokscale"
            ):
                problems.append(f"{name}: installs {target}, which file_mounts does not fill with this repo")
        rays = [r for _, p in installs for r in p["reqs"] if re.match(r"ray(\[[^\]]*\])?==", r)]
        if [r.split("==")[1] for r in rays] != [ray.__version__]:
            problems.append(f"{name}: Ray pins {rays}; the launcher runs ray=={ray.__version__}")
    return problems


def test_every_node_installs_torch_2_13_and_the_package():
    config = raw()
    kinds = {has_gpu(t) for t in config["available_node_types"].values()}
    assert kinds == {True, False}, "expected both CPU and GPU node types"
    assert setup_problems(config) == []


def test_setup_check_rejects_cuda_torch_on_a_cpu_worker():
    config = raw()
    cmds = config["available_node_types"]["cpu_worker"]["worker_setup_commands"]
    config["available_node_types"]["cpu_worker"]["worker_setup_commands"] = [
        c.replace(f"--index-url {CPU_TORCH_INDEX}", "") for c in cmds
    ]
    assert any("CPU node gets torch from PyPI" in p for p in setup_problems(config))


def test_setup_check_rejects_package_before_torch_and_a_missing_package():
    config = raw()
    cmds = config["available_node_types"]["cpu_worker"]["worker_setup_commands"]
    torch_at = next(k for k, c in enumerate(cmds) if "torch==" in c)
    cmds.insert(torch_at, cmds.pop(next(k for k, c in enumerate(cmds) if " -e " in c)))
    assert any("before torch" in p for p in setup_problems(config))
    config = raw()
    config["head_setup_commands"] = [c for c in config["head_setup_commands"] if " -e " not in c]
    assert any("head: does not" in p for p in setup_problems(config))


def test_setup_check_rejects_another_torch_version():
    config = raw()
    config["head_setup_commands"] = [
        c.replace("torch==2.13.0", "torch==2.12.0") for c in config["head_setup_commands"]
    ]
    assert any("torch==2.12.0" in p for p in setup_problems(config))


# ---------------------------------------------------------------- the docs' study overrides exist


def test_docs_overrides_are_study_fields():
    from pydantic import BaseModel

    from orchestrator.study import Study

    keys = [
        argv[k + 1].split("=", 1)[0]
        for line in doc_command_lines()
        for argv in all_commands(line)
        for k, a in enumerate(argv[:-1])
        if a == "--set"
    ]
    assert {"tracking.uri", "ray.address", "workdir"} <= set(keys)
    for key in keys:
        model: type[BaseModel] | None = Study
        for part in key.split("."):
            assert model is not None and part in model.model_fields, f"--set {key}: no such study field"
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
