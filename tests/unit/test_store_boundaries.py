"""Where grokscale's store meets text it does not control, on real MLflow stores in tmp_path: search
filters quote any value, reads page through every run, credentials are scrubbed from what is
logged (specs as data, tracebacks, URLs' passwords and ?password=), and SQLite's write-ahead log
is switched on only on a local file system."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.store import names, results
from orchestrator.store.names import tag_equals
from orchestrator.store.redact import scrub, scrub_text, secrets_in
from orchestrator.store.results import all_runs, load_results
from orchestrator.store.tracker import Tracker, config_yaml, use_wal
from orchestrator.study import Study, preflight, redact_url
from orchestrator.study.preflight import (
    filesystem_type,
    is_network_filesystem,
    mount_table,
    network_filesystem,
)

VALID = Path(__file__).parent / "broken_configs" / "_valid.yaml"


@pytest.fixture
def client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


# -- search filters --------------------------------------------------------------------------------
def test_tag_equals_finds_exactly_the_run_of_any_value(client):
    exp = client.create_experiment("quotes")
    values = ["N[width=it's]_D=0.5", 'say "hi"', "back\\", "a\\'b", "plain", "it"]
    ids = {v: client.create_run(exp, tags={"k": v}).info.run_id for v in values}
    for v in values:
        assert [r.info.run_id for r in client.search_runs([exp], tag_equals("k", v))] == [ids[v]], v
    with pytest.raises(ValueError, match="both ' and \""):  # MLflow cannot say it: refused, not guessed
        tag_equals("k", 'it\'s "both"')


# -- paging ----------------------------------------------------------------------------------------
def study_runs(client: MlflowClient, n_children: int) -> tuple[str, str]:
    """A study's parent run and n_children training runs under it, as the driver tags them."""
    exp = client.create_experiment("paged")
    parent = client.create_run(exp, tags={names.TAG_ROLE: names.ROLE_STUDY}).info.run_id
    for i in range(n_children):
        tags = {names.PARENT_RUN: parent, names.TAG_STATUS: "completed"}
        run = client.create_run(exp, tags=tags).info.run_id
        for key, value in (
            (names.PARAM_CELL, "N[d_model=16]_D=0.5"),
            (names.PARAM_SEED, 0),
            (names.PARAM_TRIAL_NUMBER, i),
        ):
            client.log_param(run, key, value)
    return exp, parent


def test_all_runs_pages_until_mlflow_has_no_more(client):
    exp, parent = study_runs(client, 7)
    query = tag_equals(names.PARENT_RUN, parent)
    assert len(client.search_runs([exp], query, max_results=3)) == 3  # one page: what max_results alone gave
    runs = all_runs(client, [exp], query, page_size=3)
    assert len(runs) == len({r.info.run_id for r in runs}) == 7
    assert len(all_runs(client, [exp], "", page_size=2)) == 8  # the parent too


def test_the_report_reads_every_run_past_one_page(client, tmp_path, monkeypatch):
    study_runs(client, 5)
    monkeypatch.setattr(results, "PAGE_SIZE", 2)  # the constant every reader pages by, lowered
    found = load_results(f"sqlite:///{tmp_path / 'mlflow.db'}", "paged", with_curves=False)
    assert sorted(found.runs["trial_number"]) == [0, 1, 2, 3, 4]


# -- credentials -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, shown",
    [
        (
            "postgresql://optuna:s3cret@db.lab:5432/optuna",
            "postgresql://optuna:<redacted>@db.lab:5432/optuna",
        ),
        (
            "sqlite:///optuna.db?password=hunter22&timeout=3",
            "sqlite:///optuna.db?password=<redacted>&timeout=3",
        ),
        (
            "postgresql+psycopg2://u@h/db?sslmode=require&sslpassword=zz",
            "postgresql+psycopg2://u@h/db?sslmode=require&sslpassword=<redacted>",
        ),
        (
            "https://bob:pw@mlflow.lab/x?access_token=abc",
            "https://bob:<redacted>@mlflow.lab/x?access_token=<redacted>",
        ),
        ("http://127.0.0.1:5000/", "http://127.0.0.1:5000/"),  # nothing to hide: the text as given
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        (
            # not one URL: the regex fallback
            "mirror at https://bob:pw@h/x?password=p2 and ?n_train_tokens=9",
            "mirror at https://bob:<redacted>@h/x?password=<redacted> and ?n_train_tokens=9",
        ),
    ],
)
def test_redact_url_masks_passwords_of_the_user_and_of_the_query(text, shown):
    assert redact_url(text) == shown


def test_secrets_the_study_holds_are_found_and_scrubbed_wherever_they_turn_up():
    config = {
        "task": {"api_key": "k3y-0f-the-lab", "p": 23},
        "storage": "sqlite:///o.db?password=pw-in-query",
        "tracking": {"uri": "https://bob:pw-of-the-url@mlflow.lab"},
        "description": "short: pw",
    }
    known = secrets_in(config)
    assert set(known) == {"k3y-0f-the-lab", "pw-in-query", "pw-of-the-url"}
    trace = "RuntimeError: login refused for key k3y-0f-the-lab at https://bob:pw-of-the-url@mlflow.lab"
    assert (
        scrub_text(trace, known) == "RuntimeError: login refused for key <redacted> at "
        "https://bob:<redacted>@mlflow.lab"
    )
    # A spec is scrubbed as data, then made JSON: the key's name says what to hide.
    spec = scrub({"spec_json": {"config": {"task": {"api_key": "k3y-0f-the-lab", "n_train_tokens": 100}}}})
    assert spec == {"spec_json": {"config": {"task": {"api_key": "<redacted>", "n_train_tokens": 100}}}}


def test_the_tracker_logs_no_credential_of_the_spec_or_of_a_traceback(tmp_path, monkeypatch):
    """Through a real Tracker into a SQLite store: the spec as a param, a failure's traceback as its
    reason and an end tag; then every byte of the store is searched."""
    monkeypatch.chdir(tmp_path)
    key, url_password = "k3y-0f-the-lab-1234", "pw-of-the-url-5678"
    study = Study.model_validate(
        {
            "name": "leaky",
            "trainer": "pkg:run",
            "task": {"api_key": key},
            "grid": {"n": [{}], "d": [0.5]},
            "storage": f"sqlite:///o.db?password={url_password}",
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    spec = {"trainer": "pkg:run", "config": {"task": {"api_key": key}, "seed": 0}}
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {names.PARAM_SPEC_JSON: spec, "seed": 0}, {})
    reason = f"Traceback ...\nRuntimeError: key {key} refused by sqlite:///o.db?password={url_password}"
    tracker.finish_run(
        run_id,
        "failed",
        reason,
        {},
        {names.TAG_NODE_ID: f"node with {key}", "grokscale.flops.per_token": "12"},
    )
    assert tracker.drain()
    run = MlflowClient(study.tracking.uri).get_run(run_id)
    assert json.loads(run.data.params[names.PARAM_SPEC_JSON])["config"]["task"]["api_key"] == "<redacted>"
    reason = run.data.tags[names.TAG_REASON]
    assert reason.endswith("key <redacted> refused by sqlite:///o.db?password=<redacted>"), reason
    assert run.data.tags["grokscale.flops.per_token"] == "12"  # a tag is scrubbed by value, not by its name
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and url_password.encode() not in data, path


# -- SQLite's write-ahead log on local disks only --------------------------------------------------
MOUNTS = r"""/dev/root / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
filer:/export/home /home nfs4 rw,vers=4.2 0 0
/dev/sdb1 /home/alice/scratch xfs rw 0 0
//nas/share /mnt/lab\040share cifs rw 0 0
sshfs#bob@h: /mnt/remote fuse.sshfs rw 0 0
mds@tcp:/lustre /lustre lustre rw 0 0
"""


def test_the_file_system_of_a_path_is_its_longest_mount_point():
    table = mount_table(MOUNTS)
    assert ("/mnt/lab share", "cifs") in table  # /proc/mounts writes a space as \040
    cases = {
        "/home/alice/mlflow.db": "nfs4",
        "/home/alice/scratch/mlflow.db": "xfs",
        "/home": "nfs4",
        "/homework/mlflow.db": "ext4",
        "/mnt/lab share/x.db": "cifs",
        "/mnt/remote/x.db": "fuse.sshfs",
        "/lustre/proj/x.db": "lustre",
        "/tmp/x.db": "tmpfs",
        "/var/x.db": "ext4",
    }
    for path, fstype in cases.items():
        assert filesystem_type(path, table) == fstype, path
    kinds = ("nfs4", "xfs", "cifs", "fuse.sshfs", "lustre", "tmpfs", "ext4", "gpfs", "beegfs", "ceph")
    network = ["nfs4", "cifs", "fuse.sshfs", "lustre", "gpfs", "beegfs", "ceph"]
    assert [t for t in kinds if is_network_filesystem(t)] == network
    assert filesystem_type("/x", []) is None and not is_network_filesystem(None)


def test_a_store_in_tmp_path_is_local_and_gets_the_write_ahead_log(tmp_path):
    assert network_filesystem(tmp_path / "mlflow.db") is None  # the real /proc/mounts
    assert use_wal(f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=30") == "wal"
    assert not (tmp_path / "mlflow.db?timeout=30").exists()  # the query is not part of the file's name


def network_mounts(tmp_path: Path) -> Path:
    """A mounts table in which tmp_path is an NFS mount."""
    table = tmp_path.parent / f"{tmp_path.name}.mounts"
    table.write_text(f"/dev/root / ext4 rw 0 0\nfiler:/export {tmp_path.resolve()} nfs4 rw 0 0\n")
    return table


def test_on_a_network_file_system_the_store_keeps_its_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "MOUNTS", network_mounts(tmp_path))
    db = tmp_path / "mlflow.db"
    assert network_filesystem(db) == "nfs4"
    assert use_wal(f"sqlite:///{db}") is None
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_study_whose_store_is_on_a_network_file_system_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "MOUNTS", network_mounts(tmp_path))
    shutil.copy(VALID, tmp_path / "study.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "study.yaml", "--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "nothing was started" in err
    assert "error: tracking.uri: the MLflow store mlflow.db is on a network file system (nfs4)" in err
    assert "mlflow server --backend-store-uri" in err and "tracking.uri: http://" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
