"""The typed content of a skad model file: an estimator as data, rebuilt without pickle.

:func:`dump_state` turns an estimator into a ZIP archive (stored, not
compressed) of

- ``model.json``: a tree of typed values. JSON scalars and lists stand for
  themselves; every other value is a JSON object with one ``"$kind"`` tag:
  ``$tuple``, ``$dict`` (key-value pairs), ``$float`` (nan, inf), ``$ndarray``
  and ``$npscalar`` (a ``.npy`` member, read with ``allow_pickle=False``),
  ``$tensor`` (a key of ``tensors.safetensors``), ``$generator``, ``$device``,
  ``$dtype``, ``$path``, ``$random_state``, ``$ref`` (a class or function from a
  short allowlist: torch optimisers and LR schedulers, skorch callbacks,
  ``print``), ``$estimator`` (a scikit-learn or skad estimator: its class,
  ``get_params()`` and fitted attributes), ``$object`` (a skorch callback:
  class and attributes), ``$history`` (skorch's history), ``$module`` and
  ``$net`` (a detector's torch module or skorch net, see below) and
  ``$pickle``;
- ``arrays/<i>.npy`` and ``tensors.safetensors``;
- ``pickles/<i>.pkl``: only for values none of the above can express (a
  custom ``nn.Module`` as ``backbone``, a user-defined callback or pipeline
  step). :func:`load_state` unpickles them only when trusted.

A detector's torch module (``module_``) or skorch net (``net_``) is not
stored as an object: the file keeps its tensors, its submodules' train/eval
modes and the plain attributes of skad's own submodules, and loading rebuilds
the module by calling the detector's own hooks (``_build_module``,
``_build_criterion``, ``_build_batch_transform``, ``_build_extra_modules``,
``_make_net``) with random weights, then puts the saved tensors in (with their
memory layout, so that scores are equal bit for bit). The net's optimiser
state, training history, callbacks' fitted attributes and random generators
are restored as well.

Nothing in this module runs code named by a file: classes are looked up in
skad, scikit-learn, skorch and ``torch.optim`` only, and must be estimators,
callbacks, optimisers or schedulers.
"""

import importlib
import io
import json
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePath

import numpy as np
import torch
from sklearn.base import BaseEstimator

__all__ = ["ModelStateError", "UntrustedContent", "dump_state", "load_state"]

_JSON = "model.json"
_TENSORS = "tensors.safetensors"


class ModelStateError(ValueError):
    """The archive cannot be read or rebuilt (damaged, altered, or from another skad)."""


class UntrustedContent(ModelStateError):
    """The archive holds pickled objects and loading was not trusted."""


class _Untyped(Exception):
    """A value that no typed node can express."""


# ------------------------------------------------------------------ allowlists


def _top(module):
    return module.split(".")[0]


def _importable(module):
    """Modules whose classes a file may name: skad, scikit-learn, skorch, torch.optim."""
    parts = module.split(".")
    if any(p in ("__main__", "conftest") or p.startswith("test") for p in parts):
        return False
    return parts[0] in ("skad", "sklearn", "skorch") or parts[:2] == ["torch", "optim"]


def _name_of(obj):
    return f"{obj.__module__}:{obj.__qualname__}"


def _lookup(name):
    module, sep, qualname = str(name).partition(":")
    if not sep or not _importable(module):
        raise ModelStateError(f"the file names {name!r}, which skad does not load from files.")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        if part.startswith("__") or part == "<locals>":
            raise ModelStateError(f"the file names {name!r}, which skad does not load.")
        obj = getattr(obj, part)
    return obj


def _is_estimator_class(cls):
    return isinstance(cls, type) and issubclass(cls, BaseEstimator) and _top(
        cls.__module__) in ("skad", "sklearn")


def _is_callback_class(cls):
    from skorch.callbacks import Callback

    return isinstance(cls, type) and issubclass(cls, Callback) and _top(
        cls.__module__) in ("skad", "skorch")


def _is_reference(obj):
    """Classes and functions stored by name: optimisers, LR schedulers, callbacks, print."""
    from skorch.utils import noop

    if obj is print or obj is noop:
        return True
    if not isinstance(obj, type):
        return False
    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    module = obj.__module__
    return ((issubclass(obj, torch.optim.Optimizer) and module.split(".")[:2] == ["torch", "optim"])
            or (issubclass(obj, schedulers) and _top(module) in ("torch", "skorch"))
            or _is_callback_class(obj))


def _resolve_reference(name):
    obj = _lookup(name) if name != "builtins:print" else print
    if not _is_reference(obj):
        raise ModelStateError(f"the file names {name!r}, which is not a class skad loads.")
    return obj


# ------------------------------------------------------------------------ writing


class _Writer:
    """Encodes values as JSON nodes, collecting arrays, tensors and pickles."""

    def __init__(self):
        self.arrays = {}
        self.tensors = {}
        self.pickles = {}
        self.pickled = []  # what was pickled, for the header and the warning

    def tensor(self, tensor):
        key = f"t{len(self.tensors)}"
        self.tensors[key] = tensor.detach().to("cpu", copy=True).contiguous()
        return key

    def array(self, array):
        name = f"arrays/{len(self.arrays)}.npy"
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self.arrays[name] = buffer.getvalue()
        return name

    def encode(self, value, where, *, strict=False):
        """The JSON node of ``value``; untyped values are pickled, or raise if ``strict``."""
        try:
            return self._typed(value, where, strict)
        except _Untyped:
            if strict:
                raise
            name = f"pickles/{len(self.pickles)}.pkl"
            self.pickles[name] = pickle.dumps(value, protocol=5)
            self.pickled.append(f"{where} ({type(value).__module__}.{type(value).__qualname__})")
            return {"$pickle": name}

    def _typed(self, value, where, strict):
        enc = self.encode
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):
            if value.dtype.kind == "O":
                raise _Untyped
            if value.dtype.kind in "biuf" and value.dtype.itemsize <= 8:  # exact in JSON
                return {"$npscalar": value.dtype.str, "value": enc(value.item(), where)}
            return {"$npscalar": self.array(np.asarray(value))}
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else {"$float": repr(float(value))}
        if isinstance(value, list) and type(value) is list:
            return [enc(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
        if isinstance(value, tuple) and type(value) is tuple:
            return {"$tuple": [enc(v, f"{where}[{i}]", strict=strict)
                               for i, v in enumerate(value)]}
        if type(value) in (dict, OrderedDict):
            return {"$dict": [[enc(k, f"{where} key", strict=strict),
                               enc(v, f"{where}[{k!r}]", strict=strict)]
                              for k, v in value.items()]}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise _Untyped
            return {"$ndarray": self.array(value)}
        if isinstance(value, torch.Tensor) and type(value) is torch.Tensor:
            return {"$tensor": self.tensor(value), "requires_grad": bool(value.requires_grad)}
        if isinstance(value, torch.Generator):
            return _generator_node(self, value)
        if isinstance(value, torch.device):
            return {"$device": str(value)}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if isinstance(value, np.dtype) and value.names is None and not value.hasobject:
            return {"$npdtype": value.str}
        if isinstance(value, PurePath):
            return {"$path": str(value), "pure": not isinstance(value, Path)}
        if isinstance(value, np.random.RandomState):
            return {"$random_state": enc(value.get_state(), where, strict=True)}
        if _is_reference(value):
            name = "builtins:print" if value is print else _name_of(value)
            return {"$ref": name}
        from skorch.history import History

        if isinstance(value, History):
            return {"$history": enc(list(value), where, strict=strict)}
        if strict:
            raise _Untyped
        if isinstance(value, BaseEstimator) and _is_estimator_class(type(value)):
            return _estimator_node(self, value, where)
        if _is_callback_class(type(value)):
            return {"$object": _name_of(type(value)),
                    "state": self._attributes(vars(value), f"{where}.")}
        raise _Untyped

    def _attributes(self, attributes, prefix, *, strict=False, skip=()):
        """``$dict`` node of an object's attributes (str keys)."""
        pairs = []
        for key, value in attributes.items():
            if key in skip:
                continue
            try:
                pairs.append([key, self.encode(value, prefix + key, strict=strict)])
            except _Untyped:
                continue  # strict: an attribute the rebuild recreates (a function, ...)
        return {"$dict": pairs}


def _generator_node(writer, generator):
    from ._portable import PortableGenerator

    portable = PortableGenerator(generator)
    state = np.frombuffer(portable.state, dtype=np.uint8).copy()
    return {"$generator": {"device": portable.device, "seed": portable.seed,
                           "state": writer.array(state)}}


def _estimator_node(writer, estimator, where):
    from .base import BaseDetector

    params = estimator.get_params(deep=False)
    name = type(estimator).__name__
    where = f"{where}.{name}" if where else name
    node = {"$estimator": _name_of(type(estimator)),
            "params": writer._attributes(params, f"{where}.")}
    state, special = {}, {}
    for key, value in vars(estimator).items():
        if key in params:
            continue
        if isinstance(estimator, BaseDetector) and key in ("net_", "module_"):
            special[key] = value
        else:
            state[key] = value
    node["state"] = writer._attributes(state, f"{where}.")
    if "net_" in special:
        node["net"] = _net_node(writer, estimator, special.pop("net_"), where)
    if "module_" in special:
        node["module"] = _module_node(writer, special.pop("module_"))
    return node


def _module_node(writer, module):
    """Tensors, modes and skad attributes of a torch module, to be put into a rebuilt one."""
    tensors, layouts, frozen = {}, {}, []
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        if tensor is None:
            continue
        tensors[name] = writer.tensor(tensor)
        if tensor.stride() != torch.empty(tensor.shape, device="meta").stride():
            # Compare strides, not ``is_contiguous``: a 1x1 convolution's weight counts
            # as contiguous in both layouts, yet oneDNN picks its kernel from the strides.
            layouts[name] = list(tensor.stride())
        if isinstance(tensor, torch.nn.Parameter) and not tensor.requires_grad:
            frozen.append(name)
    attributes = {}
    for name, sub in module.named_modules():
        if _top(type(sub).__module__) != "skad":
            continue
        plain = {k: v for k, v in vars(sub).items()
                 if not k.startswith("_") and k != "training"
                 and not isinstance(v, (torch.nn.Module, torch.Generator))}
        attributes[name] = writer._attributes(plain, f"{name}.", strict=True)
    return {"$module": _name_of(type(module)),
            "parameters": [n for n, _ in module.named_parameters()],
            "tensors": {"$dict": [[k, v] for k, v in tensors.items()]},
            "strides": {"$dict": [[k, {"$tuple": v}] for k, v in layouts.items()]},
            "frozen": frozen,
            "training": [n for n, m in module.named_modules() if m.training],
            "attributes": {"$dict": [[k, v] for k, v in attributes.items()]}}


def _net_node(writer, detector, net, where):
    """What a trained detector's skorch net needs beyond what its hooks rebuild."""
    params = net.get_params(deep=False)
    plain = {k: v for k, v in params.items()
             if "__" in k and (v is None or isinstance(v, (bool, int, float, str)))}
    generator = None
    for holder in (net.criterion_, net.batch_transform):
        if isinstance(getattr(holder, "generator", None), torch.Generator):
            generator = holder.generator
            break
    sampler = params.get("iterator_train__generator")
    modules = {"module_": _module_node(writer, net.module_),
               "criterion_": _module_node(writer, net.criterion_)}
    for name in net.extra_modules or {}:
        modules[f"{name}_"] = _module_node(writer, getattr(net, f"{name}_"))
    callbacks = {name: writer._attributes(
        {k: v for k, v in vars(cb).items() if k.endswith("_")}, f"{where}.net_.{name}.",
        strict=True) for name, cb in getattr(net, "callbacks_", [])}
    # a net that trains a part of the detector's module_ (a head on frozen features)
    shared = [n for n, m in getattr(detector, "module_", torch.nn.Module()).named_modules()
              if m is net.module_]
    return {"$net": _name_of(type(net)), "module_in": shared[0] if shared else None,
            "params": writer._attributes(plain, f"{where}.net_."),
            "modules": {"$dict": [[k, v] for k, v in modules.items()]},
            "generator": None if generator is None else _generator_node(writer, generator),
            "sampler_generator": None if not isinstance(sampler, torch.Generator)
            else _generator_node(writer, sampler),
            "optimizer": writer.encode(net.optimizer_.state_dict(), f"{where}.net_.optimizer_"),
            "history": writer.encode(net.history, f"{where}.net_.history"),
            "callbacks": {"$dict": [[k, v] for k, v in callbacks.items()]}}


def dump_state(estimator):
    """The archive of ``estimator``, and what in it had to be pickled.

    Parameters
    ----------
    estimator : object
        Usually a scikit-learn estimator; any value is accepted (it is
        pickled if nothing else expresses it).

    Returns
    -------
    payload : bytes
        The ZIP archive.
    pickled : list of str
        ``"<where> (<type>)"`` of each value stored as pickle.
    """
    from safetensors.torch import save as save_tensors

    writer = _Writer()
    root = writer.encode(estimator, "")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(_JSON, json.dumps({"root": root}, allow_nan=False, sort_keys=True))
        archive.writestr(_TENSORS, save_tensors(writer.tensors))
        for name, data in {**writer.arrays, **writer.pickles}.items():
            archive.writestr(name, data)
    return buffer.getvalue(), writer.pickled


# ------------------------------------------------------------------------ reading


class _Reader:
    """Decodes JSON nodes, reading arrays and tensors; pickles only when trusted."""

    def __init__(self, archive, tensors, *, trusted, device_map):
        self.archive = archive
        self.tensors = tensors
        self.trusted = trusted
        self.device_map = device_map  # saved device -> device to use, for generators

    def array(self, name):
        if not (isinstance(name, str) and name.startswith("arrays/")):
            raise ModelStateError(f"bad array reference {name!r}")
        with self.archive.open(name) as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)

    def tensor(self, key):
        if key not in self.tensors:
            raise ModelStateError(f"missing tensor {key!r}")
        return self.tensors[key]

    def decode(self, node):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len([k for k in node if k.startswith("$")]) != 1:
            raise ModelStateError(f"bad node {str(node)[:80]!r}")
        (tag,) = [k for k in node if k.startswith("$")]
        value = node[tag]
        handler = getattr(self, "_" + tag[1:], None)
        if handler is None:
            raise ModelStateError(f"unknown node kind {tag!r}")
        return handler(value, node)

    def _tuple(self, value, node):
        return tuple(self.decode(v) for v in value)

    def _dict(self, value, node):
        return {self.decode(k): self.decode(v) for k, v in value}

    def _float(self, value, node):
        if value not in ("nan", "inf", "-inf"):
            raise ModelStateError(f"bad float {value!r}")
        return float(value)

    def _ndarray(self, value, node):
        return self.array(value)

    def _npscalar(self, value, node):
        if "value" in node:
            return np.dtype(str(value)).type(self.decode(node["value"]))
        return self.array(value)[()]

    def _npdtype(self, value, node):
        return np.dtype(str(value))

    def _tensor(self, value, node):
        return self.tensor(value).clone().requires_grad_(bool(node.get("requires_grad")))

    def _generator(self, value, node):
        from ._portable import restore_generator

        # on its own device when there is one here, else on the CPU from its seed
        state = self.array(value["state"]).astype(np.uint8).tobytes()
        return restore_generator(str(value["device"]), int(value["seed"]), state)

    def _device(self, value, node):
        return torch.device(str(value))

    def _dtype(self, value, node):
        dtype = getattr(torch, str(value), None)
        if not isinstance(dtype, torch.dtype):
            raise ModelStateError(f"bad dtype {value!r}")
        return dtype

    def _path(self, value, node):
        return (PurePath if node.get("pure") else Path)(str(value))

    def _random_state(self, value, node):
        state = np.random.RandomState()
        state.set_state(self.decode(value))
        return state

    def _ref(self, value, node):
        return _resolve_reference(value)

    def _history(self, value, node):
        from skorch.history import History

        return History(self.decode(value))

    def _object(self, value, node):
        cls = _lookup(value)
        if not _is_callback_class(cls):
            raise ModelStateError(f"the file names {value!r}, which is not a skorch callback.")
        obj = cls.__new__(cls)
        obj.__dict__.update(_check_attributes(obj, self.decode(node["state"]), value))
        return obj

    def _pickle(self, value, node):
        if not self.trusted:
            raise UntrustedContent(
                "it holds objects stored as pickle, and loading them runs code from the file")
        from ._portable import CPUUnpickler

        with self.archive.open(str(value)) as handle:
            return CPUUnpickler(io.BytesIO(handle.read())).load()

    def _estimator(self, value, node):
        cls = _lookup(value)
        if not _is_estimator_class(cls):
            raise ModelStateError(f"the file names {value!r}, which is not an estimator.")
        estimator = cls(**self.decode(node["params"]))
        state = _check_attributes(estimator, self.decode(node["state"]), value)
        if "device_" in state:
            state["device_"] = self.device_map.get(str(state["device_"]), state["device_"])
        estimator.__dict__.update(state)
        if "module" in node:
            estimator.module_ = _rebuild_module(self, estimator, node["module"])
        if "net" in node:
            estimator.net_ = _rebuild_net(self, estimator, node["net"])
        return estimator

    def _module(self, value, node):
        raise ModelStateError("a module outside a detector")

    _net = _module


def _check_attributes(obj, attributes, what):
    """Attributes a file may set on ``obj``: no dunder, nothing that names a method."""
    for key in attributes:
        if (not isinstance(key, str) or key.startswith("__")
                or callable(getattr(type(obj), key, None))):
            raise ModelStateError(f"the file sets {key!r} on {what}, which skad never saves")
    return attributes


def _stand_in_data(detector):
    """Data for a ``_build_module`` hook: what fit gave it, as far as the module depends on it."""
    from ._images import ImageInput

    if getattr(detector, "input_kind_", "images") == "tabular":
        return torch.zeros((2, int(detector.n_features_in_)))
    return ImageInput(np.zeros((1, 8, 8), dtype=np.uint8))


class _rebuilding:
    """Context: build a detector's modules with random weights (``pretrained=False``).

    The saved tensors replace every weight, so pretrained weights (which may
    not even exist on this machine) are not read; the global RNG is left as
    it was.
    """

    def __init__(self, detector):
        self.detector = detector

    def __enter__(self):
        self.rng = torch.random.fork_rng(devices=[])
        self.rng.__enter__()
        self.pretrained = self.detector.__dict__.get("pretrained", False)
        if "pretrained" in self.detector.__dict__:
            self.detector.pretrained = False
        return self

    def __exit__(self, *exc):
        if "pretrained" in self.detector.__dict__:
            self.detector.pretrained = self.pretrained
        self.rng.__exit__(*exc)
        return False


def _rebuild_module(reader, detector, node):
    with _rebuilding(detector):
        module = detector._build_module(_stand_in_data(detector))
    return _fill_module(reader, module, node, detector.device_)


def _fill_module(reader, module, node, device):
    """Put the saved tensors, modes and skad attributes of ``node`` into a rebuilt ``module``."""
    if _name_of(type(module)) != node["$module"]:
        raise ModelStateError(
            f"the saved module is a {node['$module']} but this skad builds a "
            f"{_name_of(type(module))}")
    module = module.to(device)
    tensors = reader.decode(node["tensors"])
    strides = reader.decode(node["strides"])
    built = {n for n, _ in module.named_parameters()}
    built |= {n for n, b in module.named_buffers() if b is not None}
    missing = built - set(tensors)
    if missing or set(node["parameters"]) != {n for n, _ in module.named_parameters()}:
        raise ModelStateError(
            f"the saved {node['$module']} does not match the module this skad builds "
            f"(missing {sorted(missing)[:3]}, parameters differ: "
            f"{sorted(set(node['parameters']) ^ {n for n, _ in module.named_parameters()})[:3]})")
    subs = dict(module.named_modules())
    for name, key in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = subs[owner_name]
        saved = reader.tensor(key)
        if name in strides:
            target = torch.empty_strided(saved.shape, strides[name], dtype=saved.dtype,
                                         device=device)
            saved = target.copy_(saved)
        else:
            saved = saved.to(device, copy=True)
        if leaf in owner._parameters:
            param = owner._parameters[leaf]
            if param.shape != saved.shape:
                raise ModelStateError(f"parameter {name} has shape {tuple(saved.shape)} in the "
                                      f"file but {tuple(param.shape)} here")
            param.data = saved
        elif leaf in owner._buffers or not hasattr(owner, leaf):
            persistent = leaf not in owner._non_persistent_buffers_set
            owner.register_buffer(leaf, saved, persistent=persistent)
        else:
            raise ModelStateError(f"tensor {name} has no place in the rebuilt module")
    for name in node["frozen"]:
        module.get_parameter(name).requires_grad_(False)
    for name, attributes in reader.decode(node["attributes"]).items():
        for key, value in _check_attributes(subs[name], attributes, name or "the module").items():
            setattr(subs[name], key, value)
    training = set(node["training"])
    for name, sub in module.named_modules():
        sub.training = name in training
    return module


def _rebuild_net(reader, detector, node):
    """The detector's skorch net, rebuilt by its own hooks and filled with the saved state."""
    data = _stand_in_data(detector)
    device = detector.device_
    generator = (reader.decode(node["generator"]) if node["generator"] is not None
                 else torch.Generator(device=device))
    sampler = (reader.decode(node["sampler_generator"]) if node["sampler_generator"]
               is not None else torch.Generator())
    with _rebuilding(detector):
        if node.get("module_in") is not None:  # the part of module_ (rebuilt first) it trains
            module = detector.module_.get_submodule(str(node["module_in"]))
        else:
            module = detector._build_module(data)
        extra = detector._build_extra_modules(data)
    params = reader.decode(node["params"])
    if not all("__" in k and (v is None or isinstance(v, (bool, int, float, str)))
               for k, v in params.items()):
        raise ModelStateError("the saved net has parameters skad never saves")
    net = detector._make_net(
        module, criterion=detector._build_criterion(generator), sampler_rng=sampler,
        batch_transform=detector._build_batch_transform(generator), extra_modules=extra,
        **params)
    net.initialize()
    modules = dict(node["modules"]["$dict"])
    for name, module_node in modules.items():
        if not hasattr(net, name):
            raise ModelStateError(f"the rebuilt net has no {name}")
        setattr(net, name, _fill_module(reader, getattr(net, name), module_node, device))
    net.optimizer_.load_state_dict(reader.decode(node["optimizer"]))
    net.history = reader.decode(node["history"])
    callbacks = dict(net.callbacks_)
    for name, attributes in reader.decode(node["callbacks"]).items():
        if name in callbacks:
            callbacks[name].__dict__.update(_check_attributes(callbacks[name], attributes, name))
    return net


def load_state(payload, *, trusted, device_map):
    """Rebuild the estimator of an archive written by :func:`dump_state`.

    Parameters
    ----------
    payload : bytes
    trusted : bool
        Whether ``$pickle`` nodes may be unpickled.
    device_map : dict
        Saved device -> device to use (``{"cuda": "cpu"}`` without CUDA).

    Returns
    -------
    estimator : object

    Raises
    ------
    UntrustedContent
        If the archive holds pickles and ``trusted`` is False.
    ModelStateError
        If the archive is damaged or cannot be rebuilt.
    """
    from safetensors.torch import load as load_tensors

    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(payload):
                raise ModelStateError(f"unexpected member {info.filename!r}")
        tree = json.loads(archive.read(_JSON), parse_constant=_refuse_constant)
        tensors = load_tensors(archive.read(_TENSORS))
    except ModelStateError:
        raise
    except Exception as exc:  # zipfile, json and safetensors raise many kinds
        raise ModelStateError(f"its content cannot be read ({type(exc).__name__}: {exc})") \
            from None
    if not trusted and _holds_pickles(tree):
        raise UntrustedContent(
            "it holds objects stored as pickle, and loading them runs code from the file")
    reader = _Reader(archive, tensors, trusted=trusted, device_map=device_map)
    try:
        return reader.decode(tree["root"])
    except ModelStateError:
        raise
    except Exception as exc:
        raise ModelStateError(
            f"it cannot be rebuilt by this skad ({type(exc).__name__}: {exc})") from exc


def _holds_pickles(node):
    if isinstance(node, list):
        return any(_holds_pickles(v) for v in node)
    if isinstance(node, dict):
        return "$pickle" in node or any(_holds_pickles(v) for v in node.values())
    return False


def _refuse_constant(name):
    raise ValueError(f"JSON constant {name} is not allowed")
