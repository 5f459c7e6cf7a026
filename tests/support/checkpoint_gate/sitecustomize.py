"""A gate in the built-in trainers' checkpoint, for a fault that must hit them where no user
trainer can stand in (a packed task: support/gates.py gates user trainers).

With this folder on PYTHONPATH, Python imports this module as it starts (the `site` module's
sitecustomize), in the driver and in every Ray worker it starts. When $GROKSCALE_TEST_CHECKPOINT_GATE
is `folder:step`, it wraps trainers.checkpoint.Checkpoint.save once that module is imported:
before saving a checkpoint of `step` or later, the process writes `folder/reached` (its pid and
the step, as JSON) and waits until `folder/open` exists. Every checkpoint before `step` is saved
as usual, so a task killed while it waits resumes from those. Without the variable it does nothing.
"""

import os

GATE_ENV = "GROKSCALE_TEST_CHECKPOINT_GATE"
WAIT_S = 900.0  # a gate no test opened: the run fails saying so, rather than hang the suite


def _gate(checkpoint_cls, folder: str, step: int) -> None:
    import json
    import time
    from pathlib import Path

    save = checkpoint_cls.save

    def gated_save(self, path):
        if self.step >= step:
            reached = Path(folder) / "reached"
            tmp = reached.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "step": self.step}))
            os.replace(tmp, reached)  # whole or not at all for the reader
            parent, deadline = os.getppid(), time.monotonic() + WAIT_S
            while not (Path(folder) / "open").exists():
                if os.getppid() != parent:  # its raylet died: a worker left behind must not wait on
                    os._exit(1)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the checkpoint gate in {folder} was never opened")
                time.sleep(0.05)
        return save(self, path)

    checkpoint_cls.save = gated_save


if os.environ.get(GATE_ENV):
    import importlib.abc
    import importlib.util
    import sys

    class _GateOnImport(importlib.abc.MetaPathFinder):
        """Finds trainers.checkpoint as Python would, and wraps its Checkpoint once it has run."""

        def find_spec(self, name, path, target=None):
            if name != "trainers.checkpoint":
                return None
            sys.meta_path.remove(self)  # once, and not for the lookup below
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                folder, _, step = os.environ[GATE_ENV].rpartition(":")
                _gate(module.Checkpoint, folder, int(step))

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _GateOnImport())
