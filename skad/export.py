"""Export a fitted detector's scoring to ONNX, for deployment without skad, torch or Python.

:func:`to_onnx` writes the forward graph of a detector's scoring -- the
anomaly score, and the anomaly map wherever the map is a forward pass -- as
an ONNX model that onnxruntime (or OpenVINO, TensorRT, ...) runs. It needs
the ``export`` extra: ``pip install "skad[export]"`` (onnx, onnxruntime and
onnxscript, which torch's exporter uses).

What is exported, per detector:

==========================  ==========================================================
detector                    outputs of the ONNX model
==========================  ==========================================================
PatchCoreDetector           ``anomaly_score``, ``anomaly_map``
PaDiMDetector               ``anomaly_score``, ``anomaly_map``
AdaptiveDeviationDetector   ``anomaly_score``; ``anomaly_map`` with
                            ``localization="segmentation"`` (default)
MultiCueDetector            ``anomaly_score`` (the fused score); ``anomaly_map`` with
                            ``localization="segmentation"``
DeviationNetworkDetector    ``anomaly_score`` (images or tabular rows)
BoundaryGuidedDetector      ``anomaly_score``, ``anomaly_map``; for one batch size
                            (``batch_size=1``): its flows score positions in chunks,
                            a loop that depends on the batch
==========================  ==========================================================

Gradient-saliency maps (``DeviationNetworkDetector``'s, and ``localization=
"saliency"`` of ADL and Multi-Cue, Multi-Cue's default) differentiate the
network with respect to its input: a backward pass, not a fixed forward
graph, so they are not exported (the score is). A detector without an export
graph raises a ``TypeError`` saying so.

The model's input is ``images``: float32 ``(batch, 3, S, S)``, RGB in
[0, 1], ``S`` the detector's ``image_size`` -- what skad feeds its networks
after resizing (antialiased bilinear) and scaling uint8 by 1/255; gray
images are repeated over the three channels. ``anomaly_score`` ``(batch,)``
is ``-score_samples`` (higher = more anomalous): an image is flagged where
``anomaly_score > threshold``, with ``threshold = -offset_`` stored in the
model's metadata (``skad.threshold``). ``anomaly_map`` ``(batch, S, S)`` is
``localize``'s map at the network's resolution; ``localize`` then resizes
it bilinearly to each image's own size.

The outputs equal skad's to float32 rounding (``rtol=1e-4`` of each output's
largest value is checked at export). One case is looser: PatchCore's
distances come from ``|q|^2 - 2 q.b + |b|^2``, which cancels for a patch that
is itself in the memory bank (a training image's), so such near-zero map
values are rounding noise in skad and onnxruntime alike (up to 1e-3 of the
map's range on the tiny test models); new images are not affected.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._optional import import_optional

__all__ = ["to_onnx"]

#: Images (or rows) of the parity check run by :func:`to_onnx`.
_N_CHECK = 3

#: What the model's outputs are, written into its metadata (``skad.outputs``).
_OUTPUTS = {
    "anomaly_score": "(batch,) -score_samples, higher = more anomalous; flagged where "
                     "anomaly_score > skad.threshold",
    "anomaly_map": "(batch, S, S) localize's map at the network's resolution",
}


def _require(module, package=None):
    return import_optional(module, extra="export", purpose="skad.export.to_onnx",
                           package=package)


def _graph(detector):
    hook = getattr(detector, "_export_graph", None)
    if hook is None:
        raise TypeError(
            f"{type(detector).__name__} has no ONNX export graph: its scoring is not written "
            "as a fixed forward graph. Export one of skad's detectors (see skad.export), or "
            "keep this one in a skad model file (skad.persistence.save)."
        )
    return hook()


def _network_input(detector, n, generator):
    """``n`` random network inputs: images in [0, 1], or standard normal rows."""
    import torch

    if detector.input_kind_ == "tabular":
        return torch.randn(n, detector.n_features_in_, generator=generator)
    size = detector.image_size
    return torch.rand(n, 3, size, size, generator=generator)


def _check_inputs(detector, X_check, batch_size, generator):
    """Float32 inputs of the network and of the detector (the same values) for the check."""
    if X_check is None:
        return _network_input(detector, batch_size or _N_CHECK, generator).numpy()
    x = np.asarray(X_check, dtype=np.float32)
    if batch_size is not None and len(x) != batch_size:
        raise ValueError(
            f"X_check has {len(x)} rows but the model is exported for batch_size={batch_size}; "
            f"pass {batch_size} rows, or batch_size=None for any batch size."
        )
    return x


def _metadata(detector, output_names):
    import skad

    offset = float(detector.offset_)
    props = {
        "skad.version": skad.__version__,
        "skad.detector": type(detector).__name__,
        "skad.params": json.dumps({k: repr(v) for k, v in detector.get_params().items()}),
        "skad.offset": repr(offset),
        "skad.threshold": repr(-offset),
        "skad.input": ("images: float32 (batch, 3, S, S), RGB in [0, 1], S = "
                       f"{detector.image_size}" if detector.input_kind_ == "images" else
                       f"rows: float32 (batch, {detector.n_features_in_})"),
        "skad.outputs": json.dumps({name: _OUTPUTS[name] for name in output_names}),
    }
    calibration = getattr(detector, "calibration_", None)
    if calibration is not None and calibration["offset"] == offset:
        props["skad.normalization"] = json.dumps(
            {"threshold": calibration["threshold"], "scale": calibration["scale"],
             "formula": "sigmoid((anomaly_score - threshold) / scale)"})
    return props


def _relative_error(got, expected):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-12)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - expected)) / scale)


def to_onnx(detector, path, *, batch_size=None, opset_version=None, check=True,
            X_check=None, rtol=1e-4):
    """Write a fitted detector's scoring (and anomaly map) as an ONNX model.

    The detector's forward graph (see :mod:`skad.export` for what each
    detector exports) is traced with torch's ONNX exporter
    (``torch.onnx.export(..., dynamo=True)``), stored with metadata (the
    detector, its parameters, its threshold ``-offset_``, and the
    normalisation of :func:`skad.thresholds.score_normalized` when the
    detector is calibrated), then, with ``check=True``, run by onnxruntime
    and compared with the detector's own ``score_samples`` and ``localize``.

    Parameters
    ----------
    detector : fitted skad detector
        Not a pipeline: export its final step (``pipe[-1]``) and apply the
        transformers before the model.
    path : str or path-like
        The ``.onnx`` file to write.
    batch_size : int or None, default=None
        ``None`` exports a model for any batch size; an int fixes it (some
        runtimes optimise fixed shapes better, e.g. ``1`` for one image at a
        time). A detector whose graph only traces for a fixed batch size
        (``BoundaryGuidedDetector``) needs an int.
    opset_version : int, default=None
        ONNX opset; None is the exporter's default.
    check : bool, default=True
        Run the model with onnxruntime on ``X_check`` and raise if its
        outputs differ from the detector's by more than ``rtol``.
    X_check : array-like of shape (n, 3, S, S) or (n, n_features), default=None
        Network inputs (float32 in [0, 1] for images) for the check, ``n``
        equal to ``batch_size`` when that is fixed; ``None`` draws 3 random
        ones (``batch_size`` when fixed), seeded.
    rtol : float, default=1e-4
        Largest accepted ``max|onnx - skad| / max|skad|``, per output.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    ImportError
        If the ``export`` extra is not installed.
    TypeError
        If ``detector`` is a pipeline, or a detector without an export graph.
    ValueError
        If ``batch_size=None`` but the graph traced for one batch size only
        (the file is removed; pass ``batch_size``).
    RuntimeError
        If the check finds the ONNX outputs differ from skad's (the file is
        removed).

    See Also
    --------
    skad.persistence.save : Skad's own model files (everything, saliency maps included).
    skad.thresholds.calibrate : Set the threshold stored in the model first.

    Examples
    --------
    >>> from skad.export import to_onnx
    >>> to_onnx(det, "patchcore.onnx")  # doctest: +SKIP
    >>> import onnxruntime  # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession("patchcore.onnx")  # doctest: +SKIP
    >>> score, anomaly_map = session.run(None, {"images": x})  # doctest: +SKIP
    """
    if isinstance(detector, Pipeline):
        raise TypeError(
            "to_onnx exports a detector, not a Pipeline: export its final step, "
            "to_onnx(pipe[-1], path), and apply the pipeline's transformers to the images "
            "before the ONNX model (skad.pipeline.transform_to_detector does it in Python)."
        )
    check_is_fitted(detector, "offset_")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or a positive int; got {batch_size!r}.")
    onnx = _require("onnx")
    _require("onnxscript")  # torch's dynamo exporter writes its graphs with it
    if check:
        ort = _require("onnxruntime")
    import torch

    graph = copy.deepcopy(_graph(detector)).to("cpu").eval()  # never touches the detector
    output_names = list(graph.output_names)
    generator = torch.Generator().manual_seed(0)
    example = _network_input(detector, batch_size or 2, generator)
    x_check = _check_inputs(detector, X_check, batch_size, generator) if check else None
    dynamic = {"x": {0: torch.export.Dim("batch")}} if batch_size is None else None
    path = Path(path)
    with torch.no_grad():
        program = torch.onnx.export(
            graph, (example,), dynamo=True, input_names=["images" if example.ndim == 4
                                                        else "rows"],
            output_names=output_names, dynamic_shapes=dynamic, opset_version=opset_version,
            verbose=False,
        )
    program.save(os.fspath(path))
    model = onnx.load(os.fspath(path))
    if batch_size is None and model.graph.input[0].type.tensor_type.shape.dim[0].HasField(
            "dim_value"):
        path.unlink(missing_ok=True)
        raise ValueError(
            f"the export graph of {type(detector).__name__} does not trace for any batch size "
            "(a loop or shape in it depends on the batch, so the exporter fixed it); pass "
            "batch_size=1 (or the batch size you deploy) for a model of that batch size."
        )
    onnx.helper.set_model_props(model, _metadata(detector, output_names))
    onnx.save(model, os.fspath(path))
    if check:
        try:
            _parity(detector, path, ort, x_check, output_names, rtol)
        except Exception:
            path.unlink(missing_ok=True)
            raise
    return path


def _parity(detector, path, ort, x, output_names, rtol):
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip(output_names, session.run(None, {session.get_inputs()[0].name: x})))
    expected = {"anomaly_score": -detector.score_samples(x)}
    if "anomaly_map" in outputs:
        expected["anomaly_map"] = detector.localize(x)
    for name, values in expected.items():
        error = _relative_error(outputs[name], values)
        if not error <= rtol:
            raise RuntimeError(
                f"the ONNX model of {type(detector).__name__} gives {name} {error:.3g} "
                f"(relative) away from skad's, above rtol={rtol}; the file was removed. Its "
                "_export_graph does not compute what the detector computes."
            )
