"""ELPV benchmark: skad's detectors under contamination, DRA's protocol.

Normal cells: defect probability 0; anomalies: probability 1. Per seed,
``contaminated_split(random_state=seed)`` splits the normals 75/25 (seed 42 is
exactly DRA's 1,131 / 377 split), draws ``n_labeled`` labelled anomalies and
``floor(r / (1 - r) * 1131)`` contaminants, both removed from the test set; the
seed also seeds the detector. In the *general* setting the labelled anomalies
come from both cell types; in the *hard* setting they are all cells of the
``--seen`` type (``mono`` by default) and the test anomalies are all cells of
the other type (an unseen anomaly type); rows say ``hard mono`` or ``hard poly``.

The models are a registry, :data:`MODELS`: a name maps to a :class:`Model`
whose ``build(seed, args)`` returns an unfitted estimator (fitted with
``fit(X_train, y_train)``) and whose optional ``rows(estimator, X_test)``
returns ``{row name: anomaly scores}`` -- so one fit can give several rows
(a detector's separate cues, say). Add a model with :func:`register`.

Jobs: every ``--models`` entry at every ``--levels`` contamination and every
``--n-labeled`` count, plus the ``--ablations`` entries (default: ADL's
ablation variants) at ``--ablation-level`` with the first ``--n-labeled``.

Images are resized once to ``--image-size`` before training. Per-run rows go
to ``<out>_runs.csv``, mean +- std over seeds to ``<out>.csv`` and ``<out>.md``.

Run from the repository root::

    python benchmarks/elpv.py [--seeds 42 43 44] [--image-size 128] [--epochs 5] [--steps 40]
"""

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._images import resize_images
from . import require_bench_extra

RESULTS = Path("benchmarks") / "results"

__all__ = ["MODELS", "Model", "main", "register", "run", "summarise"]


@dataclass(frozen=True)
class Model:
    """A benchmarked model.

    Parameters
    ----------
    build : callable
        ``build(seed, args) -> estimator``; ``args`` is the parsed command line
        (``image_size``, ``epochs``, ``steps``, ``batch_size``, ``lr``, ``device``).
    rows : callable or None
        ``rows(fitted_estimator, X_test) -> {row name: anomaly scores}``;
        ``None`` gives one row named after the model with ``-score_samples``.
    """

    build: Callable
    rows: Callable | None = None


#: Registered models by name; see :func:`register`.
MODELS = {}


def register(name, build, rows=None):
    """Add (or replace) a benchmarked model; returns its :class:`Model`."""
    MODELS[name] = Model(build, rows)
    return MODELS[name]


class NearestNeighbourReference:
    """Label-free reference: nearest-neighbour patch distance on frozen features.

    Wraps :func:`skad._baselines.nearest_neighbour_scores` as an estimator-like
    object; labelled anomalies are left out of the bank, nothing is trained.
    """

    def __init__(self, image_size):
        self.image_size = image_size

    def fit(self, X, y):
        self.X_ = X[np.asarray(y) == 1]
        return self

    def score_samples(self, X):
        from skad._baselines import nearest_neighbour_scores

        return -nearest_neighbour_scores(self.X_, X, image_size=self.image_size)


def _trained(cls_name, **params):
    """A trained detector on the benchmark's schedule (``--epochs --steps --batch-size --lr``)."""
    def build(seed, args):
        import skad

        return getattr(skad, cls_name)(
            image_size=args.image_size, max_epochs=args.epochs, steps_per_epoch=args.steps,
            batch_size=args.batch_size, lr=args.lr, random_state=seed, device=args.device,
            **params,
        )
    return build


def _adl(variant):
    def build(seed, args):
        from skad.detectors._adl import ABLATIONS

        return _trained("AdaptiveDeviationDetector", **ABLATIONS[variant])(seed, args)
    return build


register("NN reference", lambda seed, args: NearestNeighbourReference(args.image_size))
for _variant in ("DL", "Wt-DL", "DL-CE", "SoftDL-CE", "Wt-SoftDL-CE", "full"):
    register(f"ADL {_variant}", _adl(_variant))
ADL_ABLATIONS = [f"ADL {v}" for v in ("DL", "Wt-DL", "DL-CE", "SoftDL-CE", "Wt-SoftDL-CE",
                                      "full")]


def _multicue_rows(name):
    def rows(est, X_test):
        """One fit, four rows: the fused score and each squashed cue alone."""
        cues = est.cue_scores(X_test)
        return {name: cues["fused"].to_numpy(),
                **{f"{name} {cue} cue": cues[cue].to_numpy()
                   for cue in ("deviation", "uncertainty", "segmentation")}}
    return rows


register("MultiCue", _trained("MultiCueDetector"), _multicue_rows("MultiCue"))
# ADL's share of labelled anomalies in the anomaly half instead of the paper's ~1/6
register("MultiCue pseudo_fraction=0.5", _trained("MultiCueDetector", pseudo_fraction=0.5),
         _multicue_rows("MultiCue pseudo_fraction=0.5"))


def _frozen(cls_name, **params):
    """Training-free detectors (PatchCore, PaDiM) at the benchmark's image size."""
    def build(seed, args):
        import skad

        return getattr(skad, cls_name)(image_size=args.image_size, random_state=seed,
                                       device=args.device, **params)
    return build


class WithoutLabels:
    """Fits ``estimator`` on the unlabelled images alone: the labels' contribution, removed.

    The labelled anomalies are dropped (as the label-free baselines drop them
    from their models), so the training pool is the same as with labels.
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        self.estimator.fit(X[np.asarray(y) == 1])
        return self

    def score_samples(self, X):
        return self.estimator.score_samples(X)


def _bgad(labels=True, **params):
    """BoundaryGuidedDetector at its own defaults (its budget is not ADL's ``--epochs``)."""
    def build(seed, args):
        from skad import BoundaryGuidedDetector

        det = BoundaryGuidedDetector(image_size=args.image_size, random_state=seed,
                                     device=args.device, **params)
        return det if labels else WithoutLabels(det)
    return build


def _bgad_rows(name):
    def rows(est, X_test):
        """One fit, two rows: the paper's likelihood map and the log-likelihood map."""
        det = getattr(est, "estimator", est)
        out = {name: -est.score_samples(X_test)}
        kind = det.module_.map
        det.module_.map = "log_likelihood" if kind == "likelihood" else "likelihood"
        try:
            out[f"{name} ({det.module_.map} map)"] = -est.score_samples(X_test)
        finally:
            det.module_.map = kind
        return out
    return rows


register("BGAD", _bgad(), _bgad_rows("BGAD"))
register("BGAD ML only", _bgad(labels=False, lam=0.0, pseudo_anomalies=None),
         _bgad_rows("BGAD ML only"))
# The ablation ladder: an unsupervised flow; + the boundary loss on Perlin pseudo-anomalies
# (labels unused); + the labels' multiple-instance rule ("BGAD", the default); + reweighting.
register("BGAD + boundary", _bgad(anomaly_top_k=None, pseudo_anomalies="perlin"),
         _bgad_rows("BGAD + boundary"))
register("BGAD + reweighting", _bgad(divergence="alpha"), _bgad_rows("BGAD + reweighting"))
BGAD_ABLATIONS = ["BGAD ML only", "BGAD + boundary", "BGAD", "BGAD + reweighting"]


def _dra_rows(name):
    def rows(est, X_test):
        """One fit, a row for the anomaly score and one per head (normality negated)."""
        heads = est.head_scores(X_test)
        out = {name: heads["score"].to_numpy()}
        for head in est.heads_:
            sign = -1.0 if head == "normality" else 1.0
            out[f"{name} {head} head"] = sign * heads[head].to_numpy()
        return out
    return rows


def _dra(variant, **params):
    """DisentangledResidualDetector as one of the paper's ablation variants (its Table 3)."""
    def build(seed, args):
        from skad.detectors._dra import ABLATIONS

        return _trained("DisentangledResidualDetector", **ABLATIONS[variant], **params)(
            seed, args)
    return build


# DevNet beside DRA on the same schedule: DRA1A's architecture (the seen head alone), with
# DevNet's own batches (half anomalies, CutMix standing in when none is labelled).
register("DevNet", _trained("DeviationNetworkDetector"))
for _variant in ("DRA1A", "DRA2A", "DRA3Ar", "DRA3An", "DRA"):
    register(_variant, _dra(_variant), _dra_rows(_variant))
register("DRA + reweighting", _dra("DRA", divergence="alpha"), _dra_rows("DRA + reweighting"))
DRA_ABLATIONS = ["DRA1A", "DRA2A", "DRA3Ar", "DRA3An", "DRA", "DRA + reweighting"]

register("PatchCore", _frozen("PatchCoreDetector"))
register("PatchCore pruned", _frozen("PatchCoreDetector", prune_with_labels=True))
register("PaDiM", _frozen("PaDiMDetector"))


def _jobs(args):
    jobs = [(m, lvl, n) for m in args.models for lvl in args.levels for n in args.n_labeled]
    jobs += [(m, args.ablation_level, args.n_labeled[0]) for m in args.ablations]
    unknown = sorted({m for m, _, _ in jobs} - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; registered: {sorted(MODELS)}.")
    return list(dict.fromkeys(jobs))  # unique, in order


def run(args):
    """Fit and score every job; returns one row per (model row, level, n_labeled, seed)."""
    from skad.datasets import load_elpv
    from skad.metrics import image_auprc, image_auroc
    from skad.model_selection import contaminated_split

    elpv = load_elpv()
    images = resize_images(elpv.images, args.image_size)
    normal, anomalous = images[elpv.probability == 0], images[elpv.probability == 1]
    split_kw = {}
    if args.setting == "hard":
        split_kw = dict(groups=elpv.cell_type[elpv.probability == 1], seen_groups=args.seen)
    jobs, rows = _jobs(args), []
    for seed in args.seeds:
        for level, n_labeled in dict.fromkeys((lvl, n) for _, lvl, n in jobs):
            X_train, y_train, X_test, y_test = contaminated_split(
                normal, anomalous, n_labeled=n_labeled, contamination=level,
                random_state=seed, **split_kw,
            )
            for name, lvl, n in jobs:
                if (lvl, n) != (level, n_labeled):
                    continue
                model = MODELS[name]
                start = time.perf_counter()
                est = model.build(seed, args).fit(X_train, y_train)
                scored = (model.rows(est, X_test) if model.rows is not None
                          else {name: -est.score_samples(X_test)})
                seconds = time.perf_counter() - start
                setting = args.setting if args.setting == "general" else f"hard {args.seen}"
                for row_name, scores in scored.items():
                    rows.append({"model": row_name, "setting": setting,
                                 "contamination": level, "n_labeled": n_labeled, "seed": seed,
                                 "auroc": image_auroc(y_test, scores),
                                 "auprc": image_auprc(y_test, scores), "seconds": seconds})
                    print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def summarise(df):
    """Mean and std over seeds per model, setting, contamination and n_labeled."""
    agg = df.groupby(["model", "setting", "contamination", "n_labeled"], sort=False).agg(
        auroc_mean=("auroc", "mean"), auroc_std=("auroc", "std"),
        auprc_mean=("auprc", "mean"), auprc_std=("auprc", "std"),
        seconds=("seconds", "median"), n_seeds=("seed", "nunique"),
    )
    return agg.reset_index()


def build_parser():
    """The command-line parser (shared with ``skad benchmark elpv``)."""
    parser = argparse.ArgumentParser(prog="benchmarks/elpv.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--models", nargs="+", default=["NN reference", "ADL full"],
                        help="registered model names (see skad.benchmarks.elpv.MODELS)")
    parser.add_argument("--levels", type=float, nargs="+",
                        default=[0.0, 0.05, 0.10, 0.15, 0.20])
    parser.add_argument("--n-labeled", type=int, nargs="+", default=[10])
    parser.add_argument("--ablations", nargs="*", default=ADL_ABLATIONS)
    parser.add_argument("--ablation-level", type=float, default=0.10)
    parser.add_argument("--setting", choices=["general", "hard"], default="general")
    parser.add_argument("--seen", choices=["mono", "poly"], default="mono",
                        help="hard setting: the cell type of the labelled anomalies; the test "
                             "anomalies are the other type (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(RESULTS / "elpv"),
                        help="output prefix: <out>.csv, <out>.md, <out>_runs.csv")
    return parser


def main(argv=None):
    """Run the benchmark; ``argv`` as on the command line (default ``sys.argv[1:]``).

    Returns the summary DataFrame.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    require_bench_extra("the ELPV benchmark")
    started = time.perf_counter()
    df = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{args.out}_runs.csv", index=False)
    summary = summarise(df)
    summary.to_csv(f"{args.out}.csv", index=False)
    cmd = "python benchmarks/elpv.py " + shlex.join(argv)
    table = summary.to_markdown(index=False, floatfmt=".3f")
    Path(f"{args.out}.md").write_text(
        f"# ELPV, {args.setting} setting\n\nCommand: `{cmd}`; total "
        f"{(time.perf_counter() - started) / 60:.0f} min on this machine.\n\n{table}\n"
    )
    print(table)
    return summary
