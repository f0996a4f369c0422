"""Diagnostics of AdaptiveDeviationDetector on ELPV: what limits it at a CPU budget.

One configuration per run, at one contamination level (10% by default), with
the ELPV benchmark's protocol (:mod:`skad.benchmarks.elpv`: 10 labelled
anomalies, general setting, images pre-resized to ``--size``). Variations the
issue's investigation needed, none of them a detector parameter:

- ``--backbone-lr-scale s``: the backbone's learning rate is ``s * lr`` (an
  optimizer parameter group), the heads keep ``lr``;
- ``--freeze-bn``: the backbone's BatchNorm layers keep ImageNet statistics
  and affine parameters;
- ``--detach-classifier``: the classification head's BCE does not reach the
  backbone (its input is detached).

Any detector parameter can be set with ``--params '{"kmeans_prob": 0.0}'``.
Prints one AUROC per seed and the mean.

Run::

    python benchmarks/adl_diagnostics.py --variant DL-CE --seeds 42 --detach-classifier
"""

import argparse
import json
import time

import numpy as np
import torch

from skad import AdaptiveDeviationDetector
from skad._images import resize_images
from skad.datasets import load_elpv
from skad.detectors._adl import ABLATIONS
from skad.metrics import image_auroc
from skad.model_selection import contaminated_split


class _Detach(torch.nn.Module):
    def forward(self, x):
        return x.detach()


def diagnostic_detector(args):
    """AdaptiveDeviationDetector subclass with the requested variation."""

    class Diagnostic(AdaptiveDeviationDetector):
        def _net_params(self):
            params = super()._net_params()
            if args.backbone_lr_scale != 1.0:
                params["optimizer__param_groups"] = [
                    ("extractor.*", {"lr": args.lr * args.backbone_lr_scale})]
            return params

        def _build_module(self, data):
            module = super()._build_module(data)
            if args.freeze_bn:
                for bn in module.extractor.modules():
                    if isinstance(bn, torch.nn.BatchNorm2d):
                        bn.eval()
                        bn.train = lambda mode=True, _bn=bn: _bn
                        bn.weight.requires_grad_(False)
                        bn.bias.requires_grad_(False)
            if args.detach_classifier:
                module.classifier = torch.nn.Sequential(_Detach(), module.classifier)
            return module

    return Diagnostic


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--variant", default="full", choices=sorted(ABLATIONS))
    parser.add_argument("--level", type=float, default=0.1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone-lr-scale", type=float, default=1.0)
    parser.add_argument("--freeze-bn", action="store_true")
    parser.add_argument("--detach-classifier", action="store_true")
    parser.add_argument("--params", default="{}", help="JSON dict of detector parameters")
    args = parser.parse_args()

    elpv = load_elpv()
    images = resize_images(elpv.images, args.size)
    normal, anomalous = images[elpv.probability == 0], images[elpv.probability == 1]
    detector = diagnostic_detector(args)
    aurocs = []
    for seed in args.seeds:
        X, y, X_test, y_test = contaminated_split(normal, anomalous, n_labeled=10,
                                                  contamination=args.level, random_state=seed)
        start = time.perf_counter()
        det = detector(image_size=args.size, max_epochs=args.epochs,
                       steps_per_epoch=args.steps, lr=args.lr, random_state=seed,
                       **{**ABLATIONS[args.variant], **json.loads(args.params)}).fit(X, y)
        aurocs.append(image_auroc(y_test, -det.score_samples(X_test)))
        print(f"seed {seed}: AUROC {aurocs[-1]:.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    print(f"mean AUROC {np.mean(aurocs):.3f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
