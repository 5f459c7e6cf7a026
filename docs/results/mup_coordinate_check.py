"""Draw docs/img/mup_coordinate_check.png: the coordinate check of trainers/mup.py, sp against mup.

    python docs/results/mup_coordinate_check.py

Each width (d_model 32 to 512, 16x, base_width 128) of the transformer and the gpt trains 4 AdamW
steps at lr 1e-2 on one fixed batch of random tokens (3 seeds); each line is one activation's mean
|x| after the last step against the width. Flat lines are what μP promises (Yang et al. 2022);
under sp the blocks' outputs and the logits grow with the width. The fitted log-log
slopes go to docs/results/mup_coordinate_check.json. About a minute on one core.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the back end is chosen

from trainers.mup import coordinates, slopes  # noqa: E402
from trainers.spec import GPTModel, TransformerModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = [32, 64, 128, 256, 512]
STEPS, LR, SEEDS = 4, 1e-2, (0, 1, 2)
MODELS = {
    "transformer (n_head 4)": TransformerModel(n_layer=2, n_head=4),
    "gpt (head_dim 16)": GPTModel(n_layer=2, head_dim=16),
}


def main() -> None:
    records, fits = {}, {}
    for title, base in MODELS.items():
        for parametrization in ("sp", "mup"):
            cfg = base.model_copy(update={"parametrization": parametrization})
            coords = coordinates(cfg, WIDTHS, steps=STEPS, lr=LR, seeds=SEEDS)
            records[title, parametrization] = [c for c in coords if c.step == STEPS]
            fits[title, parametrization] = {
                site: s for (_, site, step), s in slopes(coords).items() if step == STEPS
            }

    fig, axes = plt.subplots(len(MODELS), 2, figsize=(10, 4.2 * len(MODELS)), sharex=True, sharey="row")
    for row, title in enumerate(MODELS):
        for col, parametrization in enumerate(("sp", "mup")):
            ax = axes[row, col]
            coords = records[title, parametrization]
            for site in sorted({c.site for c in coords}, key=lambda s: (s != "embedding", s == "logits", s)):
                points = sorted((c.width, c.size) for c in coords if c.site == site)
                ax.plot(
                    *zip(*points),
                    marker="o",
                    label=f"{site} (slope {fits[title, parametrization][site]:+.2f})",
                )
            ax.set(
                xscale="log",
                yscale="log",
                title=f"{title}: {'μP' if parametrization == 'mup' else 'SP'}",
                xlabel="width (d_model)" if row == len(MODELS) - 1 else None,
                ylabel=f"mean |x| after {STEPS} AdamW steps" if col == 0 else None,
            )
            ax.set_xticks(WIDTHS, [str(w) for w in WIDTHS])
            ax.minorticks_off()
            ax.legend(fontsize=8)
    fig.suptitle(f"Coordinate check: lr {LR}, {len(SEEDS)} seeds, base_width 128")
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "mup_coordinate_check.png"
    fig.savefig(out, dpi=110)
    table = {f"{title} {p}": fit for (title, p), fit in fits.items()}
    (ROOT / "docs" / "results" / "mup_coordinate_check.json").write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
