"""Write a small folder-of-text corpus to try `trainers.corpus` on, with nothing downloaded.

    python examples/corpus/make_corpus.py data/stdlib_docs        # ~1,000 files, ~3 MB

Each file is one module's documentation as `pydoc` renders it: English prose and signatures
from the Python that runs this, sorted by module name so the corpus is the same on every run
of the same Python.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import pydoc
import re
import sys
import warnings
from pathlib import Path

SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "venv")


def module_names() -> list[str]:
    names = set(sys.stdlib_module_names)
    names |= {m.name for m in pkgutil.iter_modules() if m.name in names}
    return sorted(n for n in names if not n.startswith("_") and n.split(".")[0] not in SKIP)


def write_corpus(out: Path, limit: int | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in module_names()[:limit]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
            text = pydoc.render_doc(module, renderer=pydoc.plaintext)
            text = re.sub(r"( at 0x| handle )[0-9a-f]+", "", text)  # addresses change every run
        except Exception:  # noqa: BLE001  a module this platform lacks (e.g. winreg): skip it
            continue
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
        written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="at most this many modules")
    args = parser.parse_args()
    n = write_corpus(args.out, args.limit)
    size = sum(p.stat().st_size for p in args.out.glob("*.txt"))
    print(f"wrote {n} files, {size / 1e6:.1f} MB, to {args.out}")


if __name__ == "__main__":
    main()
