"""Batch-1 latency on CPU: onnxruntime running ``skad.export.to_onnx``'s model vs skad itself.

For every registered detector (EfficientNet-Lite0 with its embedded ImageNet
weights, the detector's default ``image_size``), fitted on ``--n-train``
``make_defect_images`` parts (the trained detectors for 2 steps: latency does
not depend on training), this script times one image at a time:

- ``skad API``: ``score_samples`` of one uint8 image (validation, conversion,
  the network), plus ``localize`` where the ONNX model also gives the map;
- ``torch graph``: the exported graph module itself in eager torch, on the
  network's input (the same computation as the ONNX model);
- ``onnxruntime``: ``InferenceSession.run`` of the model exported for batch 1
  (``to_onnx(det, path, batch_size=1)``) on that input.

Each figure is the median over ``--repeats`` repeats of the mean of
``--calls`` calls (after one warm-up call), with ``--threads`` threads for
torch and onnxruntime alike. Needs the ``export`` and ``bench`` extras.

Run from the repository root::

    python benchmarks/onnx_latency.py [--repeats 7] [--calls 10] [--threads 1]
"""

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN = {"max_epochs": 1, "steps_per_epoch": 2, "batch_size": 8}


def _timed(call, repeats, calls):
    call()  # warm-up
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        means.append((time.perf_counter() - start) / calls)
    return 1000 * float(np.median(means))


def measure(name, X_train, y_train, image, *, repeats, calls, threads, workdir):
    """One result row for the registry detector ``name``."""
    import onnxruntime as ort
    import torch

    from skad._registry import detector_class
    from skad.export import to_onnx

    cls = detector_class(name)
    params = cls().get_params()
    det = cls(device="cpu", random_state=0, **{k: v for k, v in TRAIN.items() if k in params})
    size = det.image_size
    det.fit(X_train, y_train)
    path = to_onnx(det, Path(workdir) / f"{name}.onnx", batch_size=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                        antialias=True).clamp(0, 1).numpy()
    graph = det._export_graph().eval()
    tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    with_map = "anomaly_map" in outputs

    def skad_api():
        det.score_samples(image[None])
        if with_map:
            det.localize(image[None])

    def torch_graph():
        with torch.no_grad():
            graph(tensor)

    def onnxruntime():
        session.run(None, {"images": x})

    skad_ms = _timed(skad_api, repeats, calls)
    graph_ms = _timed(torch_graph, repeats, calls)
    ort_ms = _timed(onnxruntime, repeats, calls)
    return {
        "detector": cls.__name__,
        "image_size": size,
        "outputs": " + ".join(o.removeprefix("anomaly_") for o in outputs),
        "skad API ms": skad_ms,
        "torch graph ms": graph_ms,
        "onnxruntime ms": ort_ms,
        "onnxruntime / torch graph": ort_ms / graph_ms,
        "onnxruntime / skad API": ort_ms / skad_ms,
        "onnx MB": path.stat().st_size / 2**20,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/onnx_latency.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--detectors", nargs="+", default=None)
    parser.add_argument("--out", default="benchmarks/results/onnx_latency.md")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the table reports medians)")

    import onnxruntime as ort
    import torch

    from skad._registry import DETECTORS
    from skad.datasets import make_defect_images

    torch.set_num_threads(args.threads)
    good = make_defect_images(args.n_train, image_size=256, anomaly_ratio=0.0, random_state=0)
    bad = make_defect_images(10, image_size=256, anomaly_ratio=1.0, random_state=1)
    X_train = np.r_[good.images, bad.images]
    y_train = np.r_[np.ones(args.n_train), -np.ones(10)].astype(int)
    image = make_defect_images(1, image_size=256, anomaly_ratio=1.0, random_state=2).images[0]
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.detectors or list(DETECTORS):
            rows.append(measure(name, X_train, y_train, image, repeats=args.repeats,
                                calls=args.calls, threads=args.threads, workdir=workdir))
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f")
    command = " ".join(["python", "benchmarks/onnx_latency.py", *map(shlex.quote, sys.argv[1:])])
    text = (
        "# Batch-1 CPU latency: onnxruntime vs skad\n\n"
        f"Command: `{command}`; {time.strftime('%Y-%m-%d')}. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
        f"{torch.__version__} and onnxruntime {ort.__version__}, {args.threads} thread(s) each. "
        f"Load average (1 / 5 / 15 min) {load_before[0]:.1f} / {load_before[1]:.1f} / "
        f"{load_before[2]:.1f} before and {load_after[0]:.1f} / {load_after[1]:.1f} / "
        f"{load_after[2]:.1f} after: the machine is shared, so the ratios are the figures to "
        "read.\n\n"
        "One 256 px uint8 RGB image (`make_defect_images`) per call; milliseconds per call, "
        f"median over {args.repeats} repeats of the mean of {args.calls} calls. `skad API`: "
        "`score_samples(image[None])`, plus `localize` when the ONNX model also returns the map "
        "(`outputs`), i.e. what the ONNX model computes in one run; `torch graph`: the exported "
        "graph module in eager torch on the network input; `onnxruntime`: the exported model on "
        "the same input (the model exported with `batch_size=1`). EfficientNet-Lite0 with its "
        "embedded ImageNet weights, default "
        f"`image_size`, fitted on {args.n_train} good parts + 10 labelled defects "
        "(trained detectors: 2 steps).\n\n"
        f"{table}\n"
    )
    Path(args.out).write_text(text)
    print(table)
    return rows


if __name__ == "__main__":
    main()
