"""DevNet's networks: a top-K deviation head on a backbone, and a tabular MLP."""

from torch import nn

from .heads import DeviationHead, Normalize, rescale_images
from .outputs import ScoreOutput

__all__ = ["DevNetModule"]


class DevNetModule(nn.Module):
    """Deviation network on images: top-K patch scores averaged over input scales.

    Takes images in [0, 1] of shape ``(B, 3, S, S)`` and returns a
    :class:`~skad.nn.outputs.ScoreOutput` holding one deviation score per
    image, ``(B,)``, in training and evaluation mode alike.

    Parameters
    ----------
    extractor : FeatureExtractor
        Backbone; its last returned level feeds the head.
    top_k : float, default=0.1
        Fraction of patches averaged into the image score.
    scales : tuple of float, default=(1.0, 0.5)
        Input scales whose scores are averaged (DevNet-image uses full and half).
    mean, std : sequence of float or None
        Input normalisation (ImageNet statistics for pretrained backbones).
    """

    def __init__(self, extractor, *, top_k=0.1, scales=(1.0, 0.5), mean=None, std=None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.extractor = extractor
        self.head = DeviationHead(extractor.channels[-1], top_k=top_k)
        self.scales = tuple(scales)

    def forward(self, x):
        x = self.normalize(x)
        total = 0.0
        for scale in self.scales:
            total = total + self.head(self.extractor(rescale_images(x, scale))[-1])
        return ScoreOutput(total / len(self.scales))
