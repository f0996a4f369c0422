"""Save fitted detectors to a file and load them back, on CPU or GPU, without pickle.

A skad model file is one line of magic (``skad-model <format>``), one line of
JSON metadata (the class, the versions of skad, torch, scikit-learn, skorch,
numpy and Python that wrote it, the devices it was fitted on, the size and
SHA-256 of the payload, and what, if anything, it holds as pickle) and the
payload: a ZIP archive of typed data (see :mod:`skad._model_state`).
:func:`read_header` reads the metadata alone.

The payload is data, not code: parameters and fitted attributes as JSON and
``.npy`` arrays (read with ``allow_pickle=False``), tensors in
``safetensors``, and a detector's torch module or skorch net rebuilt on
loading by the detector's own build hooks, then filled with the saved
tensors, optimiser state and training history. Loading such a file runs no
code chosen by its writer: classes are looked up in skad, scikit-learn,
skorch and ``torch.optim`` only (estimators, callbacks, optimisers and
schedulers). The few objects that no typed form expresses (a custom
``nn.Module`` given as ``backbone``, a user-defined callback or pipeline
step) are kept as pickle; :func:`save` warns about them, the header lists
them, and :func:`load` refuses them unless ``trusted=True``.

:func:`load` also refuses, unless ``trusted=True``:

- files not written by :func:`save` (plain pickle or joblib files, or
  anything else), and files of the first skad format, whose payload was a
  pickle (load them once with ``trusted=True`` and save them again);
- files whose payload does not match the recorded size and SHA-256
  (truncated, corrupted or edited);
- files written by an incompatible skad version (another ``major.minor``).

Version drift that usually works (another skad patch release, another torch,
scikit-learn or skorch version) gives a :class:`ModelVersionWarning`.

A model fitted on a GPU loads on a machine without CUDA: tensors are put on
the CPU, the detectors' fitted device (``device_``, ``net_.device``) becomes
``"cpu"``, and the random generators used for training are re-created on the
CPU from their seeds.
"""

import datetime
import hashlib
import io
import json
import os
import platform
import re
import types
import warnings

from ._portable import CPUUnpickler, PortableGenerator, device_available, restore_generator

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelVersionWarning",
    "load",
    "read_header",
    "save",
]

#: Version of the file layout written by :func:`save` (1: a pickled payload, skad <= 0.x).
FORMAT_VERSION = 2

_MAGIC = b"skad-model"
_MAX_HEADER_BYTES = 1 << 20


class ModelFileError(ValueError):
    """A model file that :func:`load` refuses, cannot read, or cannot trust."""


class ModelVersionWarning(UserWarning):
    """A model file written with other versions of skad or its dependencies."""


# ----------------------------------------------------------------------- versions


def _versions():
    import numpy
    import sklearn
    import skorch
    import torch

    from . import __version__

    return {
        "skad": __version__,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "skorch": skorch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _major_minor(version):
    match = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


# ------------------------------------------------------- devices and generators


def _walk(root):
    """Yield ``(container, key, value)`` for every slot reachable from ``root``.

    Follows instance ``__dict__``, dicts, lists, tuples and sets; does not go
    into tensors, arrays, classes, functions or modules. ``container`` is a
    dict or list that can be assigned to, or None (tuples and sets).
    """
    import numpy as np
    import torch

    leaves = (str, bytes, bytearray, int, float, complex, bool, type(None), type,
              torch.Tensor, np.ndarray, np.generic, torch.dtype, torch.device)
    stack, seen = [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            container, items = obj, list(obj.items())
        elif isinstance(obj, list):
            container, items = obj, list(enumerate(obj))
        elif isinstance(obj, (tuple, set, frozenset)):
            container, items = None, list(enumerate(obj))
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, _OPAQUE):
            container, items = vars(obj), list(vars(obj).items())
        else:
            continue
        for key, value in items:
            yield container, key, value
            if not isinstance(value, leaves) and not _is_foreign(value):
                stack.append(value)


_OPAQUE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.ModuleType)


def _is_foreign(value):
    # pandas objects and the like: nothing of ours inside, and big internals
    module = type(value).__module__ or ""
    return module.startswith(("pandas", "numpy", "scipy"))


# old model files (format 1) pickled generators as calls of skad.persistence._restore_generator
_PortableGenerator = PortableGenerator
_restore_generator = restore_generator
_Unpickler = CPUUnpickler
_device_available = device_available


def _fitted_devices(obj):
    """Fitted skad detectors reachable from ``obj``, with their ``device_``."""
    from .base import BaseDetector

    found = [obj] if isinstance(obj, BaseDetector) else []
    found += [v for _, _, v in _walk(obj) if isinstance(v, BaseDetector)]
    unique = {id(d): d for d in found if hasattr(d, "device_")}
    return list(unique.values())


# ------------------------------------------------------------------------- save


def save(detector, path, *, metadata=None):
    """Save a fitted (or unfitted) estimator to ``path``.

    Writes a skad model file: a metadata header (class, versions of skad,
    torch, scikit-learn, skorch, numpy and Python, fitted devices, payload
    checksum, ``metadata``) followed by the estimator as typed data (JSON,
    ``.npy`` arrays and ``safetensors`` tensors, no pickle). Read it back with
    :func:`load`; read only the header with :func:`read_header`.

    Values that have no typed form (a custom ``nn.Module`` as ``backbone``,
    a user-defined callback or pipeline step) are stored as pickle, with a
    warning: such a file loads only with ``load(..., trusted=True)``.

    Parameters
    ----------
    detector : estimator
        A scikit-learn estimator, typically a skad detector or a
        :class:`~sklearn.pipeline.Pipeline` ending in one.
    path : str or path-like
        Destination file; its folder must exist. The extension is free
        (``.skad`` is a good choice).
    metadata : dict or None, default=None
        JSON-serialisable information to keep in the header (for example the
        training data's location); at most about 1 MB of JSON.

    Returns
    -------
    path : str
        The path written.

    Raises
    ------
    TypeError
        If ``detector`` is not an estimator or ``metadata`` not JSON-serialisable.
    ValueError
        If ``metadata`` is too large for the header, or ``path`` is a folder.
    FileNotFoundError
        If the folder of ``path`` does not exist.

    See Also
    --------
    load : Load the estimator back.

    Examples
    --------
    >>> from skad import AdaptiveDeviationDetector
    >>> from skad.persistence import save, load
    >>> det = AdaptiveDeviationDetector().fit(X, y)  # doctest: +SKIP
    >>> save(det, "model.skad")  # doctest: +SKIP
    'model.skad'
    >>> load("model.skad").predict(X_new)  # doctest: +SKIP
    """
    from sklearn.base import BaseEstimator

    from ._model_state import dump_state

    if not isinstance(detector, BaseEstimator):
        raise TypeError(
            f"save expects a scikit-learn estimator such as a skad detector; got "
            f"{type(detector).__name__}. Use joblib.dump for other objects."
        )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"cannot save to {path!r}: folder {folder!r} does not exist; create it first."
        )
    if os.path.isdir(path):
        raise ValueError(f"cannot save to {path!r}: it is a folder; pass a file name.")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None; got {type(metadata).__name__}.")
    try:
        metadata_line = json.dumps(metadata or {}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
    if len(metadata_line) > _MAX_HEADER_BYTES - 4096:
        raise ValueError(
            f"metadata is {len(metadata_line)} bytes of JSON; a model file's header holds at "
            f"most {(_MAX_HEADER_BYTES - 4096) // 1000} kB of it. Keep large data in a file "
            "beside the model and put its path in metadata."
        )
    payload, pickled = dump_state(detector)
    if pickled:
        warnings.warn(
            "these values have no typed form and are stored as pickle: "
            + "; ".join(pickled) + ". The file will load only with load(..., trusted=True) "
            "(skad score --trusted), since unpickling runs code from the file.",
            UserWarning, stacklevel=2,
        )
    devices = sorted({str(d.device_) for d in _fitted_devices(detector)})
    header = {
        "format": FORMAT_VERSION,
        "class": f"{type(detector).__module__}.{type(detector).__qualname__}",
        "versions": _versions(),
        "devices": devices,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "pickled": pickled,
        "metadata": metadata or {},
    }
    _write_file(path, json.dumps(header, sort_keys=True).encode("utf-8"), payload)
    return path


def _write_file(path, header_line, payload):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(_MAGIC + b" " + str(FORMAT_VERSION).encode() + b"\n")
            handle.write(header_line + b"\n")
            handle.write(payload)
        os.replace(tmp, path)  # never leave a half-written model under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------- load


def _read(path):
    """``(header, payload offset)``; header is None for a file without skad's magic line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a folder, not a model file; check the path.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist; check the path.")
    with open(path, "rb") as handle:
        first = handle.readline(64)
        if not first.startswith(_MAGIC + b" "):
            return None, 0
        try:
            file_format = int(first[len(_MAGIC) + 1:].strip())
        except ValueError:
            raise ModelFileError(f"{path!r} has a damaged skad header line {first!r}.") from None
        if file_format > FORMAT_VERSION:
            raise ModelFileError(
                f"{path!r} uses skad model format {file_format}, newer than this skad "
                f"understands ({FORMAT_VERSION}); upgrade skad (pip install -U skad)."
            )
        line = handle.readline(_MAX_HEADER_BYTES + 1)
        try:
            if len(line) > _MAX_HEADER_BYTES or not line.endswith(b"\n"):
                raise ValueError
            header = json.loads(line.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError
        except ValueError:
            raise ModelFileError(
                f"{path!r} has a damaged skad metadata header; the file is corrupted."
            ) from None
        header["format"] = file_format
        return header, handle.tell()


def read_header(path):
    """Read a skad model file's metadata without reading its payload.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.

    Returns
    -------
    header : dict
        ``format``, ``class``, ``versions`` (skad, torch, sklearn, skorch,
        numpy, python), ``devices`` (where the detectors were fitted),
        ``created``, ``payload_bytes``, ``payload_sha256``, ``pickled`` (the
        values stored as pickle, which need ``trusted=True``; format 2) and
        ``metadata``.

    Raises
    ------
    ModelFileError
        If the file was not written by :func:`save`.
    """
    header, _ = _read(path)
    if header is None:
        raise ModelFileError(
            f"{os.fspath(path)!r} is not a skad model file (written by skad.persistence.save)."
        )
    return header


def _check_versions(header, path, trusted):
    saved = header.get("versions") or {}
    current = _versions()
    skad_saved = saved.get("skad")
    if _major_minor(skad_saved) != _major_minor(current["skad"]):
        message = (
            f"{path!r} was written by skad {skad_saved}, which is not compatible with skad "
            f"{current['skad']} (a different major.minor version): the saved detector may not "
            f"work or load here. Refit it with this version, or install skad=={skad_saved}"
        )
        if not trusted:
            raise ModelFileError(message + "; pass trusted=True (--trusted) to load it anyway.")
        warnings.warn(message + ".", ModelVersionWarning, stacklevel=3)
        return
    drift = [f"{name} {saved[name]} (now {current[name]})"
             for name in ("skad", "torch", "sklearn", "skorch")
             if name in saved and saved[name] != current[name]]
    if drift:
        warnings.warn(
            f"{path!r} was written with " + ", ".join(drift) + "; it usually works, but "
            "check its scores, or refit and save it again with these versions.",
            ModelVersionWarning, stacklevel=3,
        )


def load(path, *, trusted=False):
    """Load an estimator saved by :func:`save`.

    The estimator is rebuilt from typed data: skad calls the constructors of
    its own (and scikit-learn's, skorch's) classes with the saved parameters,
    rebuilds each detector's torch modules with the detector's build hooks
    and fills them with the saved tensors. No code from the file runs. With
    ``trusted=False`` the file is checked first and refused
    (:class:`ModelFileError`) if it was not written by :func:`save`, if it
    was written in skad's first format (a pickle), if its payload does not
    match the recorded checksum, if it was written by an incompatible skad
    version (another ``major.minor``), or if it holds values stored as
    pickle. Other version drift (skad patch releases, torch, scikit-learn,
    skorch) gives a :class:`ModelVersionWarning`.

    A model fitted on a GPU loads on a machine without CUDA: it is put on the
    CPU (``device_ == "cpu"``) with a warning; pass ``device="cpu"`` to
    ``set_params`` before refitting it there.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    trusted : bool, default=False
        Skip the refusals, for files from a source you trust: unpickle the
        values stored as pickle, load first-format files (pickles) and files
        without skad's header (plain pickle or joblib files, read with
        :func:`joblib.load`), and load files from other skad versions or with a
        checksum mismatch (with a warning). Unpickling runs code from the file.

    Returns
    -------
    estimator : object
        The saved estimator.

    Raises
    ------
    ModelFileError
        If ``trusted=False`` and the file cannot be trusted, or if it is not
        a model file skad can read.
    FileNotFoundError
        If ``path`` does not exist.

    See Also
    --------
    save : Save an estimator.
    read_header : Read the metadata only.
    """
    path = os.fspath(path)
    header, offset = _read(path)
    if header is None:
        if not trusted:
            raise ModelFileError(
                f"{path!r} is not a skad model file (it does not start with skad's header, "
                "so it was not written by skad.persistence.save). Loading it would unpickle "
                "arbitrary code; if you trust its source, pass trusted=True (--trusted)."
            )
        import joblib

        return joblib.load(path)
    if header["format"] < 2 and not trusted:
        raise ModelFileError(
            f"{path!r} was written in skad's first model format, whose payload is a pickle: "
            "loading it runs code from the file. If you trust its source, load it with "
            "trusted=True (--trusted) and save it again, which writes the current format."
        )
    pickled = header.get("pickled") or []
    if pickled and not trusted:
        raise ModelFileError(
            f"{path!r} holds values stored as pickle ({'; '.join(map(str, pickled))}); "
            "loading them runs code from the file. If you trust its source, pass "
            "trusted=True (--trusted)."
        )
    with open(path, "rb") as handle:
        handle.seek(offset)
        payload = handle.read()
    _check_payload(header, payload, path, trusted)
    _check_versions(header, path, trusted)
    if header["format"] < 2:
        estimator = _unpickle(payload)
    else:
        estimator = _load_typed(payload, header, path, trusted)
    expected = header.get("class")
    actual = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    if expected != actual and not trusted:
        raise ModelFileError(
            f"{path!r} declares a {expected} but holds a {actual}; the file was altered. "
            "Pass trusted=True to use it anyway."
        )
    return estimator


def _check_payload(header, payload, path, trusted):
    problems = []
    if header.get("payload_bytes") != len(payload):
        problems.append(f"{len(payload)} payload bytes instead of {header.get('payload_bytes')}"
                        " (truncated?)")
    elif header.get("payload_sha256") != hashlib.sha256(payload).hexdigest():
        problems.append("a payload checksum that does not match its header")
    if not problems:
        return
    message = f"{path!r} has " + "; ".join(problems) + ": the file is damaged or was altered"
    if not trusted:
        raise ModelFileError(message + ". Save the model again, or pass trusted=True.")
    warnings.warn(message + ".", ModelVersionWarning, stacklevel=3)


def _device_map(header):
    """Saved devices that this machine lacks -> ``"cpu"``."""
    return {d: "cpu" for d in header.get("devices") or [] if not _device_available(str(d))}


def _load_typed(payload, header, path, trusted):
    from ._model_state import ModelStateError, UntrustedContent, load_state

    moved = _device_map(header)
    try:
        estimator = load_state(payload, trusted=trusted, device_map=moved)
    except UntrustedContent as exc:
        raise ModelFileError(
            f"{path!r} cannot be loaded without trusted=True: {exc}. If you trust its "
            "source, pass trusted=True (--trusted)."
        ) from None
    except ModelStateError as exc:
        raise ModelFileError(
            f"{path!r} is damaged or was altered, or was written by an incompatible skad: "
            f"{exc}. Save the model again."
        ) from None
    _warn_moved(moved)
    return estimator


def _warn_moved(moved):
    if moved:
        warnings.warn(
            f"the model was fitted on {sorted(set(moved))} which is not available here; it was "
            "loaded on the CPU. To refit it here, first call set_params(device='cpu').",
            UserWarning, stacklevel=4,
        )


def _unpickle(payload):
    """The estimator of a first-format file (a pickle; only ever called when trusted)."""
    import torch
    from skorch.exceptions import DeviceWarning

    with warnings.catch_warnings():
        # skorch warns once per net; one warning below says it for the whole model
        warnings.simplefilter("ignore", DeviceWarning)
        estimator = _Unpickler(io.BytesIO(payload)).load()
    moved = []
    for det in _fitted_devices(estimator):
        net = getattr(det, "net_", None)  # trained detectors; frozen ones hold module_
        if not _device_available(str(det.device_)):
            moved.append(str(det.device_))
            det.device_ = "cpu"
            if net is not None:
                net.device = "cpu"
        elif net is not None and isinstance(net.device, torch.device):
            net.device = str(net.device)
    _warn_moved(moved)
    return estimator
