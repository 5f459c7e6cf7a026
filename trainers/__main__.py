"""`python -m trainers [SPEC.yaml] [--task.p 53 | --set train.lr=3e-4 ...]`: train one model.

Flags name any field of TrainSpec by its dotted path; they apply on top of the YAML, if any.
Progress is printed at every evaluation; the result is printed at the end (JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from trainers.overrides import OverrideError, apply_overrides
from trainers.spec import TrainSpec
from trainers.train import train

OWN_FLAGS = {"--set", "--checkpoint-dir", "--json", "--quiet", "--help", "-h"}


def split_field_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--a.b VALUE` / `--a.b=VALUE` field flags from this CLI's own arguments.

    ['x.yaml', '--train.lr', '3e-4', '--seed=2'] -> (['x.yaml'], ['train.lr=3e-4', 'seed=2']).
    """
    own, fields, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if not arg.startswith("--") or name in OWN_FLAGS:
            own.append(arg)
            if name in ("--set", "--checkpoint-dir") and "=" not in arg and i + 1 < len(argv):
                own.append(argv[i + 1])
                i += 1
        elif "=" in arg:
            fields.append(arg[2:])
        elif i + 1 < len(argv):
            fields.append(f"{arg[2:]}={argv[i + 1]}")
            i += 1
        else:
            raise OverrideError(f"flag {arg!r} has no value")
        i += 1
    return own, fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", nargs="?", help="YAML file holding a TrainSpec (task, model, train, seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--checkpoint-dir", help="save checkpoints here and resume from one if present")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    try:
        own, fields = split_field_flags(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(own)
        data = yaml.safe_load(Path(args.spec).read_text()) if args.spec else {}
        data = apply_overrides(data or {}, fields + args.set)
        spec = TrainSpec.model_validate(data)
    except (OSError, yaml.YAMLError, OverrideError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        for e in err.errors():
            print(f"error: {'.'.join(map(str, e['loc'])) or '(spec)'}: {e['msg']}", file=sys.stderr)
        return 2

    def progress(r: dict) -> None:
        print(
            f"step {r['step']:>7}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.3f}  "
            f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.3f}  |w| {r['weight_norm']:.1f}",
            flush=True,
        )

    result = train(spec, report=None if args.quiet else progress, checkpoint_dir=args.checkpoint_dir)
    if args.json:
        print(json.dumps({"spec": spec.model_dump(mode="json"), **result.to_dict()}))
    else:
        e = result.events
        print(f"status {result.status} ({result.reason}); {result.steps} steps in {result.wall_time_s:.1f} s")
        print(f"n_params {result.n_params}; n_train {result.n_train}")
        print(f"memorization step {e.memorization_step}; generalization step {e.generalization_step}")
        print("final " + "  ".join(f"{k} {v:.4g}" for k, v in result.final.items()))
    return 0 if result.status != "diverged" else 1


if __name__ == "__main__":
    sys.exit(main())
