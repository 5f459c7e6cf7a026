"""`python -m trainers.corpus SOURCE --cache-dir DIR [tokenizer=bpe vocab_size=4096 ...]`

Tokenize a corpus ahead of a study (or check that it reads) and print what the trainer will
see: token counts of both splits, the vocabulary, the cache folder, and a decoded sample.
Settings are CorpusTask fields as key=value; values are read as YAML (4096 -> int).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import yaml
from pydantic import ValidationError

from trainers.corpus import CorpusError, CorpusTask, load_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.corpus", description=__doc__.split("\n\n")[1])
    parser.add_argument("source")
    parser.add_argument("settings", nargs="*", metavar="field=value")
    parser.add_argument("--cache-dir", default=None, help="where tokens and the BPE are kept (text sources)")
    args = parser.parse_intermixed_args(argv)
    fields = {"source": args.source}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected field=value, got {item!r}")
        fields[key] = yaml.safe_load(value)
    try:
        data = load_corpus(CorpusTask(**fields), args.cache_dir)
    except (ValidationError, CorpusError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(data.info, indent=1))
    x, _ = data.sample("train", 1, torch.Generator().manual_seed(0))
    if data.encoder is not None:
        print("a training window:", repr(data.decode(x[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
