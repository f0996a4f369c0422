"""The ``skad`` command line.

Subcommands:

- ``skad demo``: train AdaptiveDeviationDetector on the ELPV solar cells
  (offline, 10% contamination, 10 labelled anomalies), print AUROC / AUPRC next
  to a label-free nearest-neighbour reference, and write a report folder;
- ``skad fit``: train a detector on a folder of images and save it;
- ``skad score``: score a folder of images with a saved detector (CSV, maps),
  at a given threshold or one calibrated on a folder of good images;
- ``skad export``: write a saved detector's scoring as an ONNX model;
- ``skad benchmark``: run :mod:`skad.benchmarks.elpv` or
  :mod:`skad.benchmarks.throughput`.

``skad <command> --help`` lists each command's options. Heavy libraries
(torch, timm, matplotlib) are imported only by the command that needs them.

Exit status: 0 on success, 2 on a user error (a bad option, folder, image
or model file), printed as ``skad <command>: error: ...`` without a
traceback (``--debug`` shows it), as argparse does for usage errors.
"""

import argparse
import ast
import importlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from . import __version__
from ._registry import DETECTORS, detector_class

__all__ = ["build_parser", "main"]

#: Command-line options that map onto detector parameters.
_OPTION_PARAMS = {
    "image_size": "image_size", "epochs": "max_epochs", "device": "device",
    "seed": "random_state", "batch_size": "batch_size", "lr": "lr",
    "steps": "steps_per_epoch", "backbone": "backbone", "pretrained": "pretrained",
    "contamination": "contamination",
}

_DEMO = dict(image_size=128, epochs=5, steps=40, lr=1e-3, batch_size=16, seed=42,
             device="auto", contamination=0.1, n_labeled=10)


#: Exit status of a user error, argparse's convention for usage errors.
USER_ERROR = 2


class CommandError(Exception):
    """A user error: printed as ``skad <command>: error: ...`` with exit status 2."""


# --------------------------------------------------------------------------- parser


def _common_options(defaults=None):
    """``--device --image-size --epochs --seed`` (+ hidden tiny-model options)."""
    defaults = defaults or {}
    # without a default of its own the option keeps the detector's (its docstring says which)
    shown = "%(default)s" if defaults else "the detector's"
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("common options")
    group.add_argument("--device", default=defaults.get("device"),
                       help="'auto' (CUDA when available), 'cpu' or 'cuda[:N]' "
                            "(default: " + shown + ")")
    group.add_argument("--image-size", type=int, default=defaults.get("image_size"),
                       help="side of the square images the network sees (default: " + shown + ")")
    group.add_argument("--epochs", type=int, default=defaults.get("epochs"),
                       help="training epochs (default: " + shown + ")")
    group.add_argument("--seed", type=int, default=defaults.get("seed"),
                       help="random seed of the split and the detector (default: " + shown + ")")
    group.add_argument("--steps", type=int, default=defaults.get("steps"),
                       help="batches per epoch (default: " + shown + ")")
    group.add_argument("--batch-size", type=int, default=defaults.get("batch_size"),
                       help="images per batch (default: " + shown + ")")
    group.add_argument("--lr", type=float, default=defaults.get("lr"),
                       help="learning rate (default: " + shown + ")")
    # tiny random-weight backbones for tests and smoke runs
    group.add_argument("--backbone", default=None, help=argparse.SUPPRESS)
    group.add_argument("--no-pretrained", dest="pretrained", action="store_const", const=False,
                       default=None, help=argparse.SUPPRESS)
    return parent


def build_parser():
    """The ``skad`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="skad",
        description="Visual anomaly detection with contaminated training data and a few "
                    "labelled anomalies.",
    )
    parser.add_argument("--version", action="version", version=f"skad {__version__}")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="command")

    demo = commands.add_parser(
        "demo", parents=[_common_options(_DEMO)],
        help="train ADL on ELPV solar cells and write a report (a few minutes on a CPU)",
        description="Train AdaptiveDeviationDetector on ELPV (offline; normal = defect "
                    "probability 0, anomalous = 1) with 10 labelled anomalies and 10% "
                    "contamination, print AUROC/AUPRC next to a label-free nearest-neighbour "
                    "reference, and write heatmaps, histograms and scores to --out.",
    )
    demo.add_argument("--out", default="skad-demo-report",
                      help="report folder (default: %(default)s)")
    demo.add_argument("--contamination", type=float, default=_DEMO["contamination"],
                      dest="split_contamination", metavar="R",
                      help="share of anomalies among the unlabelled training images "
                           "(default: %(default)s)")
    demo.add_argument("--n-labeled", type=int, default=_DEMO["n_labeled"],
                      help="labelled anomalies in training (default: %(default)s)")
    demo.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    demo.set_defaults(func=_cmd_demo)

    fit = commands.add_parser(
        "fit", parents=[_common_options()],
        help="train a detector on a folder of images and save it",
        description="Train a detector on a folder of images and save it (skad.persistence). "
                    "DATA is a plain folder of images (all unlabelled), or a good/ + "
                    "<defect>/ tree (good/ unlabelled, other folders labelled anomalies), or "
                    "an MVTec-style category folder (its train/ is used).",
    )
    fit.add_argument("--data", required=True, metavar="DIR", help="training images")
    fit.add_argument("--labeled", metavar="DIR",
                     help="folder of known anomalies (images directly inside or in subfolders)")
    fit.add_argument("--detector", default="padim", choices=sorted(DETECTORS),
                     help="detector (default: %(default)s: training-free, the best on ELPV, "
                          "fits 1,000 images in under a minute on a CPU; see the guide's "
                          "'Which detector?')")
    fit.add_argument("--out", default="model.skad", metavar="FILE",
                     help="model file to write (default: %(default)s)")
    fit.add_argument("--normal", default="good",
                     help="name of the folder of normal images in a tree (default: %(default)s)")
    fit.add_argument("--contamination", default=None, type=_contamination,
                     help="'auto' or the expected share of anomalies, which sets the "
                          "prediction threshold (default: the detector's)")
    fit.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="any other detector parameter, e.g. -p lam=0.5 (repeatable)")
    fit.add_argument("-v", "--verbose", action="store_true",
                     help="list the files and folders that were skipped, and why")
    fit.set_defaults(func=_cmd_fit)

    score = commands.add_parser(
        "score", help="score a folder of images with a saved detector",
        description="Score images with a saved detector: writes path, anomaly_score "
                    "(higher = more anomalous) and prediction (-1 anomaly, +1 normal), plus "
                    "label and defect_type for a good/ + <defect>/ tree, and anomaly-map PNGs "
                    "with --maps.",
    )
    score.add_argument("--model", required=True, metavar="FILE", help="model file from skad fit")
    score.add_argument("--data", required=True, metavar="DIR",
                       help="images to score: a plain folder, a good/ + <defect>/ tree, or an "
                            "MVTec-style category folder (its test/ is used)")
    score.add_argument("--out", default="scores.csv", metavar="FILE",
                       help="CSV to write (default: %(default)s)")
    score.add_argument("--maps", metavar="DIR",
                       help="also write one grayscale anomaly-map PNG per image here")
    score.add_argument("--normal", default="good",
                       help="name of the folder of normal images in a tree (default: %(default)s)")
    threshold = score.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, metavar="T",
                           help="predict an anomaly when anomaly_score > T (default: the "
                                "model's threshold)")
    threshold.add_argument("--max-fpr", type=float, metavar="RATE",
                           help="set the threshold on --calibration's good images so that at "
                                "most this share of good images is flagged (e.g. 0.01)")
    score.add_argument("--calibration", metavar="DIR",
                       help="held-out good images for --max-fpr (a plain folder, or a tree "
                            "whose --normal folder is used)")
    score.add_argument("--batch-size", type=int, default=64,
                       help="images scored at once (default: %(default)s)")
    score.add_argument("--trusted", action="store_true",
                       help="load model files that fail skad's checks (other skad version, no "
                            "skad header, pickled content); loading runs code from the file")
    score.add_argument("-v", "--verbose", action="store_true",
                       help="list the files and folders that were skipped, and why")
    score.set_defaults(func=_cmd_score)

    export = commands.add_parser(
        "export", help="write a saved detector's scoring as an ONNX model",
        description="Export a saved detector (skad fit's model file) with "
                    "skad.export.to_onnx: its score (and anomaly map) as one ONNX graph, "
                    "checked against skad's own scores with onnxruntime. Needs the 'export' "
                    "extra (pip install 'skad[export]').",
    )
    export.add_argument("--model", required=True, metavar="FILE", help="model file from skad fit")
    export.add_argument("--out", default="model.onnx", metavar="FILE",
                        help="ONNX file to write (default: %(default)s)")
    export.add_argument("--format", default="onnx", choices=["onnx"],
                        help="export format (default: %(default)s)")
    export.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="fix the model's batch size (default: any batch size; "
                             "BoundaryGuidedDetector needs one, e.g. 1)")
    export.add_argument("--trusted", action="store_true",
                        help="load model files that fail skad's checks (see skad score)")
    export.set_defaults(func=_cmd_export)

    bench = commands.add_parser(
        "benchmark", help="run a benchmark (elpv, throughput)",
        description="Run skad.benchmarks.<name>.main with the remaining arguments "
                    "(`skad benchmark elpv --help` lists them). For elpv, an AUROC-vs-"
                    "contamination plot is written next to the summary CSV.",
    )
    bench.add_argument("name", choices=["elpv", "throughput"])
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments of the benchmark")
    bench.set_defaults(func=_cmd_benchmark)
    return parser


def _contamination(value):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a float in (0, 0.5]; got {value!r}") from None


def main(argv=None):
    """Run the ``skad`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    status : int
        0 on success, 2 on a user or usage error (printed without a traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return USER_ERROR
    from .persistence import ModelFileError

    try:
        return args.func(args) or 0
    except (CommandError, ModelFileError, ValueError, OSError, ImportError) as exc:
        # ValueError: skad's own checks of data and parameters; OSError: files and folders
        if args.debug:
            raise
        print(f"skad {args.command}: error: {exc}", file=sys.stderr)
        return USER_ERROR


# --------------------------------------------------------------------------- data


class Collected(NamedTuple):
    """The images of a ``--data`` or ``--labeled`` folder.

    Parameters
    ----------
    paths : list of str
        The image files, in reading order.
    target : ndarray or None
        +1 / -1 per image for a ``good/`` + ``<defect>/`` tree, else None.
    defect : ndarray or None
        The image's folder name for a tree, else None.
    root : pathlib.Path
        The folder the paths were read from (an MVTec split folder, when entered).
    skipped : list of tuple (pathlib.Path, str)
        The entries that were not read, and why (see :func:`skad._io.scan_images`).
    """

    paths: list
    target: object
    defect: object
    root: Path
    skipped: list


def _scan(folder):
    from ._io import scan_images

    return scan_images(folder)


def _collect(root, *, option, normal="good", split=None):
    """Images of a folder: a :class:`Collected`.

    A folder with images directly inside is plain (no labels, its subfolders
    skipped); otherwise an MVTec-style category folder is entered at
    ``split``, and a tree with a ``normal`` folder is read by
    :func:`skad.datasets.load_folder`; any other tree contributes the images
    of all its subfolders, unlabelled. Every entry not read is in ``skipped``
    with the reason.
    """
    from ._io import IMAGE_EXTENSIONS
    from .datasets import load_folder

    root = Path(root)
    if not root.is_dir():
        raise CommandError(f"{option} {str(root)!r} is not a folder; check the path.")
    scan = _scan(root)
    if scan.images:
        return Collected([str(p) for p in scan.images], None, None, root, scan.skipped)
    names = [p.name for p in _subfolders(root)]
    if split is not None and split in names and normal not in names:
        return _collect(root / split, option=option, normal=normal)
    subfolders = _subfolders(root)
    skipped = [(p, why) for p, why in scan.skipped if why != "folder"]
    skipped += [item for sub in subfolders for item in _scan(sub).skipped]
    if normal in names:
        data = load_folder(root, normal=normal)
        return Collected(list(data.images), data.target, data.defect_type, root, skipped)
    files = [str(f) for sub in subfolders for f in _scan(sub).images]
    if not files:
        found = f"; skipped {_describe_skipped(skipped)}" if skipped else ""
        raise CommandError(
            f"{option} {str(root)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"directly or in its subfolders{found}; point it at a folder of images."
        )
    return Collected(files, None, None, root, skipped)


def _subfolders(folder):
    from .datasets._folders import list_subdirs

    return list_subdirs(folder)


def _describe_skipped(skipped):
    """``"3 skipped: 2 .gif, 1 hidden"``."""
    counts = Counter(why for _, why in skipped)
    parts = ", ".join(f"{n} {why}" for why, n in sorted(counts.items(), key=lambda c: -c[1]))
    return f"{len(skipped)} skipped: {parts}"


def _report_read(n_read, skipped, verbose):
    """The summary line of the images read, and with ``--verbose`` the skipped entries."""
    line = f"{n_read} images read"
    if skipped:
        line += ", " + _describe_skipped(skipped)
        if not verbose:
            line += " (--verbose lists them)"
    print(line, flush=True)
    if verbose:
        for path, why in skipped:
            print(f"  skipped {path} ({why})")


def _decode_all(paths, option):
    """Decode every image before any work; a bad file is named, with what is wrong with it."""
    from ._io import read_image

    bad = []
    for path in paths:
        try:
            read_image(path)
        except ValueError as exc:  # ImageFileError, MissingImageError
            bad.append(str(exc))
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CommandError(
            f"{len(bad)} file(s) in {option} cannot be read as images: "
            + "; ".join(bad[:5]) + more + ". Remove or replace them."
        )


def _output_file(option, value, example):
    """``value`` as a file to write; a folder is a user error, its parent is created later."""
    path = Path(value)
    if path.is_dir():
        raise CommandError(
            f"{option} {str(path)!r} is a folder; pass a file name, e.g. "
            f"{str(path / example)!r}."
        )
    return path


# --------------------------------------------------------------------------- detectors


def _detector_class(name):
    if name not in DETECTORS:
        raise CommandError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}.")
    return detector_class(name)


def _parse_param(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise CommandError(f"--param expects NAME=VALUE, e.g. -p lam=0.5; got {text!r}.")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a bare string such as divergence=kl
    return name.strip(), value


def make_detector(name, args, **overrides):
    """A detector from its short name and the command-line options that were given."""
    cls = _detector_class(name)
    valid = cls().get_params()
    params = {}
    for option, param in _OPTION_PARAMS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if param not in valid:
            flag = "--" + option.replace("_", "-")
            why = "" if "max_epochs" in valid else " (it is training-free)"
            raise CommandError(
                f"the {name} detector has no {param!r} parameter{why}; drop {flag}.")
        params[param] = value
    params.update(overrides)
    for text in getattr(args, "param", []) or []:
        key, value = _parse_param(text)
        if key not in valid:
            raise CommandError(
                f"the {name} detector ({cls.__name__}) has no parameter {key!r}; valid "
                f"parameters: {sorted(valid)}."
            )
        params[key] = value
    return cls(**params)


# --------------------------------------------------------------------------- fit / score


def _cmd_fit(args):
    import numpy as np

    from .persistence import save

    out = _output_file("--out", args.out, "model.skad")
    data = _collect(args.data, option="--data", normal=args.normal, split="train")
    paths, skipped = list(data.paths), list(data.skipped)
    y = (np.ones(len(paths), dtype=int) if data.target is None
         else np.asarray(data.target, dtype=int))
    sources = sorted(set(data.defect[y == -1])) if data.target is not None else []
    if args.labeled:
        extra = _collect(args.labeled, option="--labeled", normal=args.normal)
        paths, y = paths + extra.paths, np.concatenate([y, -np.ones(len(extra.paths), int)])
        skipped += extra.skipped
        sources.append(str(args.labeled))
    n_anomalies = int((y == -1).sum())
    if n_anomalies * 2 > len(y):
        raise CommandError(
            f"{n_anomalies} of {len(y)} training images are labelled anomalies; skad expects "
            "mostly normal (unlabelled) images and a few labelled anomalies. Check --data "
            f"(normal images belong in {args.normal!r}/) and --labeled."
        )
    det = make_detector(args.detector, args, verbose=1)
    _decode_all(paths, "--data/--labeled")
    _report_read(len(paths), skipped, args.verbose)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    verb = "Training" if "max_epochs" in det.get_params() else "Fitting"
    print(f"{verb} {type(det).__name__} on {len(paths)} images from {data.root} "
          f"({len(paths) - n_anomalies} unlabelled, {n_anomalies} labelled anomalies"
          + (f" from {', '.join(sources)}" if sources else "") + ")", flush=True)
    start = time.perf_counter()
    det.fit(paths, y)
    seconds = time.perf_counter() - start
    save(det, out, metadata={"data": str(data.root), "n_images": len(paths),
                             "n_labeled": n_anomalies, "fit_seconds": round(seconds, 1)})
    print(f"{'Trained' if verb == 'Training' else 'Fitted'} in {seconds:.0f}s; "
          f"saved to {args.out}")
    return 0


def _batches(X, batch_size, desc):
    """``(start, X[start:start + batch_size])`` pairs under a progress bar."""
    from tqdm.auto import tqdm

    starts = range(0, len(X), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False):
        yield start, X[start:start + batch_size]


def _cmd_score(args):
    import numpy as np

    from ._cli_thresholds import apply_threshold, check_threshold_options
    from ._report import MapWriter, write_scores_csv
    from .metrics import image_auprc, image_auroc
    from .persistence import load
    from .pipeline import final_detector, localize

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1; got {args.batch_size}.")
    out = _output_file("--out", args.out, "scores.csv")
    if args.maps and Path(args.maps).exists() and not Path(args.maps).is_dir():
        raise CommandError(
            f"--maps {args.maps!r} is a file; pass a folder (it is created if missing).")
    check_threshold_options(args)
    det = load(args.model, trusted=args.trusted)
    for method in ("score_samples", "predict"):
        if not hasattr(det, method):
            raise CommandError(f"{args.model!r} holds a {type(det).__name__}, not a detector.")
    detector = final_detector(det)  # a saved pipeline's last step holds offset_ and localize
    writer = MapWriter(args.maps) if args.maps else None
    if writer is not None and not hasattr(detector, "localize"):
        raise CommandError(f"{type(detector).__name__} has no localize method; drop --maps.")
    data = _collect(args.data, option="--data", normal=args.normal, split="test")
    paths, target, root = data.paths, data.target, data.root
    _decode_all(paths, "--data")
    _report_read(len(paths), data.skipped, args.verbose)
    calibration = None
    if args.calibration is not None:
        cal = _collect(args.calibration, option="--calibration", normal=args.normal,
                       split="test")
        _decode_all(cal.paths, "--calibration")
        calibration = (cal.paths, cal.target)
    if (message := apply_threshold(det, args, calibration)) is not None:
        print(message)
    offset = getattr(detector, "offset_", None)
    scores, predictions = [], []
    for _, batch in _batches(paths, args.batch_size, "scoring"):
        scores.append(det.score_samples(batch))
        predictions.append(det.predict(batch) if offset is None
                           else np.where(scores[-1] - offset < 0, -1, 1))
        if writer is not None:
            names = [Path(p).relative_to(root) for p in batch]
            writer.write(localize(det, batch), names)
    normality = np.concatenate(scores)
    columns = {"path": paths, "anomaly_score": -normality,
               "prediction": np.concatenate(predictions)}
    if target is not None:
        columns.update(label=target, defect_type=data.defect)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    write_scores_csv(out, columns)
    n_flagged = int((columns["prediction"] == -1).sum())
    print(f"Scored {len(paths)} images ({n_flagged} predicted anomalous); wrote {args.out}"
          + (f" and {writer.written} maps to {args.maps}" if writer is not None else ""))
    if target is not None and len(set(np.asarray(target).tolist())) == 2:
        print(f"AUROC {image_auroc(target, -normality):.3f}, "
              f"AUPRC {image_auprc(target, -normality):.3f} (labels from the folder names)")
    return 0


def _cmd_export(args):
    from .export import to_onnx
    from .persistence import load

    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1; got {args.batch_size}.")
    out = _output_file("--out", args.out, "model.onnx")
    det = load(args.model, trusted=args.trusted)
    try:
        to_onnx(det, out, batch_size=args.batch_size)
    except (TypeError, RuntimeError) as exc:
        # a pipeline, a detector without an export graph, or a failed parity check
        raise CommandError(str(exc)) from None
    print(f"Exported {type(det).__name__} to {args.out} (onnxruntime outputs checked against "
          "skad's)")
    return 0


# --------------------------------------------------------------------------- demo


def _load_elpv():
    from .datasets import load_elpv

    return load_elpv()


def _step(number, total, text):
    print(f"[{number}/{total}] {text}", flush=True)


def _cmd_demo(args):
    import numpy as np

    from . import _report
    from ._baselines import nearest_neighbour_scores
    from ._images import resize_images
    from .metrics import image_auprc, image_auroc
    from .model_selection import contaminated_split

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _report.have_matplotlib()
    total = 5

    _step(1, total, f"Loading ELPV and resizing to {args.image_size} px")
    elpv = _load_elpv()
    normal_idx = np.flatnonzero(elpv.probability == 0)
    anomalous_idx = np.flatnonzero(elpv.probability == 1)
    if args.limit is not None:  # smoke runs: a random subset of each class
        rng = np.random.RandomState(args.seed)
        normal_idx = np.sort(rng.permutation(normal_idx)[:args.limit])
        anomalous_idx = np.sort(rng.permutation(anomalous_idx)[:args.limit])
    images = resize_images(elpv.images[np.r_[normal_idx, anomalous_idx]], args.image_size)
    source = np.r_[normal_idx, anomalous_idx]
    X_train, y_train, X_test, y_test, idx = contaminated_split(
        images[:len(normal_idx)], images[len(normal_idx):], n_labeled=args.n_labeled,
        contamination=args.split_contamination, random_state=args.seed, return_indices=True,
    )
    print(f"      {len(X_train)} training cells ({int(np.sum(y_train == -1))} labelled "
          f"anomalies, {args.split_contamination:.0%} contamination among the rest), {len(X_test)} "
          f"test cells ({int(np.sum(y_test == -1))} anomalous)", flush=True)

    _step(2, total, "Label-free nearest-neighbour reference (frozen EfficientNet-Lite0)")
    start = time.perf_counter()
    reference = nearest_neighbour_scores(X_train[y_train == 1], X_test,
                                         image_size=args.image_size)
    reference_s = time.perf_counter() - start

    det = make_detector("adl", args, verbose=1)
    _step(3, total, f"Training AdaptiveDeviationDetector ({det.max_epochs} epochs x "
                    f"{det.steps_per_epoch} steps, batch {det.batch_size}, lr {det.lr:g})")
    start = time.perf_counter()
    det.fit(X_train, y_train)
    fit_s = time.perf_counter() - start

    _step(4, total, f"Scoring {len(X_test)} test cells")
    start = time.perf_counter()
    normality = np.concatenate([det.score_samples(batch)
                                for _, batch in _batches(X_test, 64, "scoring")])
    score_s = time.perf_counter() - start
    scores = -normality

    rows = [
        {"model": f"AdaptiveDeviationDetector ({det.max_epochs}x{det.steps_per_epoch} steps)",
         "AUROC": image_auroc(y_test, scores), "AUPRC": image_auprc(y_test, scores),
         "seconds": fit_s + score_s},
        {"model": "nearest-neighbour patch distance (no labels)",
         "AUROC": image_auroc(y_test, reference), "AUPRC": image_auprc(y_test, reference),
         "seconds": reference_s},
    ]
    table = _report.format_table(rows)

    _step(5, total, f"Writing the report to {out}/")
    _report.write_scores_csv(out / "scores.csv", {
        "index": np.arange(len(y_test)), "label": y_test, "anomaly_score": scores,
        "reference_score": reference, "elpv_index": source[idx.test],
    })
    written = ["scores.csv"]
    if plots:
        order = np.argsort(-scores, kind="stable")
        k = min(4, len(order))
        groups = [("overlays_highest.png", order[:k], "highest"),
                  ("overlays_lowest.png", order[::-1][:k], "lowest")]
        maps = [det.localize(X_test[chosen]) for _, chosen, _ in groups]
        vmax = max(float(np.max(m)) for m in maps)  # one colour scale for both figures
        for (name, chosen, what), group_maps in zip(groups, maps):
            titles = [f"#{i} {'anomalous' if y_test[i] == -1 else 'normal'}\n"
                      f"score {scores[i]:.2f}" for i in chosen]
            _report.save_overlays(out / name, X_test[chosen], group_maps, titles, vmax=vmax,
                                  suptitle=f"ADL heatmaps: {what}-scored test cells "
                                           f"(colour scale 0 to {vmax:.2g})")
            written.append(name)
        _report.save_score_histograms(out / "score_histograms.png", [
            ("AdaptiveDeviationDetector", scores, -det.offset_),
            ("nearest-neighbour reference", reference, None),
        ], y_test)
        written.append("score_histograms.png")
    else:
        print("      matplotlib is not installed: figures skipped "
              "(pip install \"skad[plot]\")", flush=True)
    elapsed = time.perf_counter() - started
    settings = (f"ELPV, {args.n_labeled} labelled anomalies, {args.split_contamination:.0%} "
                f"contamination, seed {args.seed}, {args.image_size} px, device {det.device_}")
    (out / "results.txt").write_text(f"{settings}\n\n{table}\n\ntotal {elapsed:.0f}s\n")
    written.append("results.txt")
    print(f"\n{settings}\n\n{table}\n")
    print(f"Report: {out}/ ({', '.join(written)}); total {elapsed / 60:.1f} min")
    return 0


# --------------------------------------------------------------------------- benchmark


def _cmd_benchmark(args):
    module = importlib.import_module(f"skad.benchmarks.{args.name}")
    module.main(list(args.args))
    if args.name != "elpv":
        return 0
    import pandas as pd

    from . import _report

    prefix = module.build_parser().parse_args(list(args.args)).out
    summary_csv = Path(f"{prefix}.csv")
    if not summary_csv.is_file():
        raise CommandError(f"the benchmark wrote no summary {str(summary_csv)!r}; no plot.")
    if not _report.have_matplotlib():
        print("matplotlib is not installed: AUROC plot skipped (pip install \"skad[plot]\")")
        return 0
    plot = Path(f"{prefix}_auroc.png")
    _report.save_auroc_plot(plot, pd.read_csv(summary_csv), title="ELPV")
    print(f"wrote {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
