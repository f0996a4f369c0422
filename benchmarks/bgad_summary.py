"""Issue 14's acceptance figures for BoundaryGuidedDetector, from the ELPV runs.

Reads the per-run rows (``*_runs.csv``) that ``benchmarks/elpv.py`` wrote for
BGAD, PatchCore and PaDiM (the same splits and seeds in each file) and writes
``benchmarks/results/elpv_bgad_summary.md``: mean +- std AUROC over seeds per
contamination level, the 0 -> 20 % drop, the ablations at 10 %, and the hard
setting's mean over both directions, each with its gap to PaDiM in the same
run. Nothing is fitted here.

Run from the repository root, after the ELPV runs named in
``benchmarks/results/bgad.md``::

    python benchmarks/bgad_summary.py benchmarks/results/elpv_bgad_*_runs.csv
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

RESULTS = Path("benchmarks") / "results"
MAIN = ["BGAD", "BGAD (log_likelihood map)", "PatchCore", "PaDiM"]


def _table(df, index, columns="model"):
    """``mean +- std (n)`` of the AUROC per ``index`` row and ``columns`` column."""
    agg = df.groupby([index, columns], sort=False, observed=True)["auroc"].agg(
        ["mean", "std", "count"])
    cells = agg.apply(lambda r: f"{r['mean']:.3f} ± {r['std']:.3f} ({r['count']:.0f})", axis=1)
    return cells.unstack(columns).sort_index()


def _gaps(df, index, models, reference="PaDiM"):
    """Mean AUROC of ``models`` minus ``reference``'s, per ``index`` value."""
    means = df.groupby([index, "model"], observed=True)["auroc"].mean().unstack("model")
    return pd.DataFrame({m: means[m] - means[reference] for m in models if m in means})


def summarise(runs):
    """Markdown of the acceptance tables from the concatenated per-run rows."""
    runs = runs.assign(contamination=pd.Categorical(
        runs.contamination.map(lambda c: f"{100 * c:g} %"),
        [f"{100 * c:g} %" for c in sorted(runs.contamination.unique())], ordered=True))
    general = runs[runs.setting == "general"]
    main = general[general.model.isin(MAIN)]
    parts = ["## General setting (10 labelled anomalies)", "",
             _table(main, "contamination").to_markdown(), "",
             "Gap to PaDiM (mean AUROC difference, same splits):", "",
             _gaps(main, "contamination", MAIN[:3]).to_markdown(floatfmt="+.3f"), ""]
    means = main.groupby(["contamination", "model"], observed=True)["auroc"].mean().unstack("model")
    if {"0 %", "20 %"} <= set(means.index):
        drop = (means.loc["0 %"] - means.loc["20 %"]).rename("drop 0 -> 20 %")
        parts += ["AUROC drop from 0 % to 20 % contamination:", "",
                  drop.to_frame().to_markdown(floatfmt=".3f"), ""]
    at10 = general[general.contamination == "10 %"]
    parts += ["## Ablations at 10 %", "",
              _table(at10.assign(level="10 %"), "model", "level").to_markdown(), ""]
    hard = runs[runs.setting.str.startswith("hard")]
    if len(hard):
        parts += ["## Hard setting (labelled: one cell type; test anomalies: the other)", "",
                  _table(hard, "setting").to_markdown(), ""]
        per_seed = hard.groupby(["model", "seed"])["auroc"].mean().reset_index()
        both = per_seed.groupby("model")["auroc"].agg(["mean", "std"])
        both["gap to PaDiM"] = both["mean"] - both.loc["PaDiM", "mean"]
        parts += ["Mean of both directions (per seed, then over seeds):", "",
                  both.to_markdown(floatfmt=".3f"), ""]
    return "\n".join(parts)


def main(argv=None):
    """Write the summary; ``argv`` as on the command line."""
    parser = argparse.ArgumentParser(prog="benchmarks/bgad_summary.py")
    parser.add_argument("runs", nargs="+", help="per-run CSVs of benchmarks/elpv.py")
    parser.add_argument("--out", default=str(RESULTS / "elpv_bgad_summary.md"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runs = pd.concat([pd.read_csv(p) for p in args.runs], ignore_index=True)
    text = summarise(runs)
    cmd = "python benchmarks/bgad_summary.py " + " ".join(args.runs)
    Path(args.out).write_text(f"# BGAD on ELPV: acceptance figures\n\nCommand: `{cmd}`\n\n"
                              f"{text}")
    print(text)


if __name__ == "__main__":
    main()
