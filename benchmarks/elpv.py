"""ELPV benchmark: AdaptiveDeviationDetector under contamination, DRA's protocol.

Normal cells: defect probability 0; anomalies: probability 1. Per seed,
``contaminated_split(random_state=seed)`` splits the normals 75/25 (seed 42 is
exactly DRA's 1,131 / 377 split), draws 10 labelled anomalies (general
setting) and ``floor(r / (1 - r) * 1131)`` contaminants, both removed from the
test set; the seed also seeds the detector.

Rows:

- ``ADL full`` at every contamination level (``--levels``);
- the paper's ablation variants (DL, Wt-DL, DL-CE, SoftDL-CE, Wt-SoftDL-CE,
  full) at 10% contamination;
- ``NN reference``: nearest-neighbour patch distance on the same frozen
  pretrained features (no training, no labels), at every level.

Images are resized once to ``--image-size`` before training. Mean +- std
over seeds go to ``benchmarks/results/elpv.csv`` and ``elpv.md``.

Run::

    python benchmarks/elpv.py [--seeds 42 43 44] [--image-size 128] [--epochs 6] [--steps 40]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from skad import AdaptiveDeviationDetector
from skad._baselines import nearest_neighbour_scores
from skad.datasets import load_elpv
from skad.detectors._adl import ABLATIONS
from skad.metrics import image_auprc, image_auroc
from skad.model_selection import contaminated_split

RESULTS = Path(__file__).parent / "results"



def resize_all(images, size, batch=256):
    """uint8 (n, H, W) -> uint8 (n, size, size), antialiased, once."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).float()[:, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


def evaluate(name, level, seed, y_test, anomaly_scores, seconds):
    return {"model": name, "contamination": level, "seed": seed,
            "auroc": image_auroc(y_test, anomaly_scores),
            "auprc": image_auprc(y_test, anomaly_scores), "seconds": seconds}


def run(args):
    elpv = load_elpv()
    images = resize_all(elpv.images, args.image_size)
    normal, anomalous = images[elpv.probability == 0], images[elpv.probability == 1]
    rows = []
    jobs = [(level, "full") for level in args.levels]
    jobs += [(0.1, v) for v in args.variants if not (v == "full" and 0.1 in args.levels)]
    for seed in args.seeds:
        for level in sorted({lvl for lvl, _ in jobs}):
            X_train, y_train, X_test, y_test = contaminated_split(
                normal, anomalous, n_labeled=args.n_labeled, contamination=level,
                random_state=seed,
            )
            start = time.perf_counter()
            ref = nearest_neighbour_scores(X_train[y_train == 1], X_test,
                                           image_size=args.image_size)
            rows.append(evaluate("NN reference", level, seed, y_test, ref,
                                 time.perf_counter() - start))
            print(rows[-1], flush=True)
            for lvl, variant in jobs:
                if lvl != level:
                    continue
                start = time.perf_counter()
                det = AdaptiveDeviationDetector(
                    image_size=args.image_size, max_epochs=args.epochs,
                    steps_per_epoch=args.steps, batch_size=args.batch_size, lr=args.lr,
                    random_state=seed, device=args.device, **ABLATIONS[variant],
                ).fit(X_train, y_train)
                scores = -det.score_samples(X_test)
                rows.append(evaluate(f"ADL {variant}", level, seed, y_test, scores,
                                     time.perf_counter() - start))
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def summarise(df):
    agg = df.groupby(["model", "contamination"]).agg(
        auroc_mean=("auroc", "mean"), auroc_std=("auroc", "std"),
        auprc_mean=("auprc", "mean"), auprc_std=("auprc", "std"),
        seconds=("seconds", "median"), n_seeds=("seed", "nunique"),
    )
    return agg.reset_index()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--levels", type=float, nargs="+",
                        default=[0.0, 0.05, 0.10, 0.15, 0.20])
    parser.add_argument("--variants", nargs="+", default=list(ABLATIONS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--n-labeled", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS / "elpv"))
    args = parser.parse_args()
    started = time.perf_counter()
    df = run(args)
    df.to_csv(f"{args.out}_runs.csv", index=False)
    summary = summarise(df)
    summary.to_csv(f"{args.out}.csv", index=False)
    cmd = ("python benchmarks/elpv.py --seeds " + " ".join(map(str, args.seeds))
           + f" --image-size {args.image_size} --epochs {args.epochs} --steps {args.steps}"
           + f" --lr {args.lr}")
    table = summary.to_markdown(index=False, floatfmt=".3f")
    Path(f"{args.out}.md").write_text(
        f"# ELPV, 10 labelled anomalies, general setting\n\nCommand: `{cmd}`; total "
        f"{(time.perf_counter() - started) / 60:.0f} min on this machine.\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
