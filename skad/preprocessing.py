"""Transformers for contamination studies on image data."""

import warnings
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._image_sets import add_gaussian_noise, check_image_set, check_same_layout

__all__ = ["ContaminationInjector"]


# --------------------------------------------------------------------------- transformer


class ContaminationInjector(TransformerMixin, BaseEstimator):
    """Replace a fraction of the unlabelled training images by anomalies.

    A transformer for contamination studies inside a
    :class:`~sklearn.pipeline.Pipeline`: at fit time it swaps a fraction of
    the unlabelled rows (``y == +1``) of ``X`` for real anomalies, which stay
    labelled normal, so the detector that follows is trained on contaminated
    data; at predict / score time it passes ``X`` through unchanged.

    Parameters
    ----------
    anomalies : array-like of shape (n_anomalies, ...) or list of str
        Pool of anomalous images to inject: an array with the same image
        shape, layout and dtype family as ``X`` (uint8 or float), or a list
        of file paths when ``X`` is a list of paths.

    contamination : float, default=0.1
        Fraction of the unlabelled rows to replace, in [0, 1]. Exactly
        ``n_injected_ = floor(contamination * n_unlabelled + 0.5)`` rows are
        replaced, so that the share of anomalies among the rows labelled +1
        is ``contamination`` (up to rounding). Note that
        :func:`skad.model_selection.contaminated_split` *adds*
        ``floor(r / (1 - r) * n_normal)`` anomalies instead, which gives the
        same share ``r`` among the +1 rows.

    noise_std : float, default=0.0
        Standard deviation of additive Gaussian noise on the injected images,
        in 0-255 intensity units: uint8 images get ``noise_std``, float images
        (assumed in [0, 1]) get ``noise_std / 255``; results are clipped and
        keep their dtype. Only for arrays.

    random_state : int, RandomState instance or None, default=None
        Determines which rows are replaced, which anomalies replace them and
        the noise. Pass an int for reproducible output.

    Attributes
    ----------
    injected_indices_ : ndarray of shape (n_injected,)
        Sorted indices of the rows of ``X`` replaced during the last fit
        (``n_injected_`` of them).

    anomaly_indices_ : ndarray of shape (n_injected,)
        Index in ``anomalies`` of the image put in each row of
        ``injected_indices_``.

    n_injected_ : int
        Number of rows replaced.

    See Also
    --------
    skad.model_selection.contaminated_split : Build a contaminated train /
        test split once, outside a pipeline.

    Notes
    -----
    As with :class:`~sklearn.preprocessing.TargetEncoder`, ``fit_transform``
    is not ``fit(X, y).transform(X)``: only ``fit_transform`` injects
    anomalies, ``transform`` returns ``X`` itself. ``Pipeline.fit`` calls
    ``fit_transform`` on its intermediate steps, so the final estimator is
    fitted on contaminated data and predicts on untouched data.

    Labelled rows (``y == -1``) are never replaced and ``y`` is not changed:
    the injected anomalies carry the label +1, as real contamination does.
    Anomalies are drawn without replacement while the pool lasts; if more
    rows must be replaced than ``anomalies`` holds, a ``UserWarning`` says
    so, the whole pool is used once and the remainder is drawn with
    replacement (the same anomaly then appears several times in the
    training set, which a detector may learn by heart).

    ``X`` is never modified: arrays are copied before rows are replaced and
    path lists are returned as new lists.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.preprocessing import ContaminationInjector
    >>> X = np.zeros((10, 4, 4), dtype=np.uint8)
    >>> y = np.array([-1] + [1] * 9)
    >>> anomalies = np.full((3, 4, 4), 255, dtype=np.uint8)
    >>> injector = ContaminationInjector(anomalies, contamination=0.2, random_state=0)
    >>> Xt = injector.fit_transform(X, y)
    >>> injector.n_injected_, int((Xt.reshape(10, -1).max(axis=1) == 255).sum())
    (2, 2)
    >>> injector.transform(X) is X
    True
    """

    _parameter_constraints: dict = {
        "anomalies": ["array-like"],
        "contamination": [Interval(Real, 0, 1, closed="both")],
        "noise_std": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, anomalies, *, contamination=0.1, noise_std=0.0, random_state=None):
        self.anomalies = anomalies
        self.contamination = contamination
        self.noise_std = noise_std
        self.random_state = random_state

    def _check_y(self, y, n_samples):
        if y is None:
            raise ValueError(
                "ContaminationInjector needs y to know which rows are unlabelled; pass "
                "fit(X, y) with y = -1 for labelled anomalies and +1 for unlabelled rows."
            )
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n_samples:
            raise ValueError(
                f"y must be 1-D with one label per row of X ({n_samples}); got shape {y.shape}."
            )
        if not np.isin(y, (-1, 1)).all():
            raise ValueError(
                f"y must contain only -1 (labelled anomaly) and +1 (unlabelled); got values "
                f"{np.unique(y)[:10].tolist()}."
            )
        return y

    def _select(self, X, y):
        """Validate and draw the rows to replace; return the validated inputs."""
        self._validate_params()
        kind, X = check_image_set(X, "X")
        pool_kind, pool = check_image_set(self.anomalies, "anomalies")
        check_same_layout(kind, X, "X", pool_kind, pool, "anomalies")
        if kind == "paths" and self.noise_std > 0:
            raise ValueError(
                "noise_std > 0 needs image arrays; X is a list of paths. Load the images or "
                "set noise_std=0."
            )
        y = self._check_y(y, len(X))
        rng = check_random_state(self.random_state)

        unlabelled = np.flatnonzero(y == 1)
        n_injected = int(np.floor(self.contamination * len(unlabelled) + 0.5))
        rows = np.sort(rng.choice(unlabelled, size=n_injected, replace=False))
        n_pool = len(pool)
        if n_injected > n_pool:
            warnings.warn(
                f"ContaminationInjector replaces {n_injected} rows (contamination="
                f"{self.contamination} of {len(unlabelled)} unlabelled rows) but its pool "
                f"'anomalies' holds {n_pool} images: {n_injected - n_pool} of them are injected "
                "again. Pass at least that many anomalies, or contamination <= "
                f"{n_pool / len(unlabelled):.3g}.", UserWarning, stacklevel=3,
            )
        if n_injected <= n_pool:
            sources = rng.choice(n_pool, size=n_injected, replace=False)
        else:
            extra = rng.choice(n_pool, size=n_injected - n_pool, replace=True)
            sources = np.concatenate([rng.permutation(n_pool), extra])
        self.injected_indices_ = rows
        self.anomaly_indices_ = sources.astype(np.intp)
        self.n_injected_ = n_injected
        return kind, X, pool, rng

    def fit(self, X, y):
        """Draw the rows to replace; ``X`` itself is not stored.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or list of str
            Training images (arrays) or image paths.

        y : array-like of shape (n_samples,)
            -1 for labelled anomalies, +1 for unlabelled images.

        Returns
        -------
        self : object
            Fitted transformer.
        """
        self._select(X, y)
        return self

    def fit_transform(self, X, y=None):
        """Fit, then return a copy of ``X`` with the selected rows replaced.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or list of str
            Training images (arrays) or image paths.

        y : array-like of shape (n_samples,)
            -1 for labelled anomalies, +1 for unlabelled images. Required.

        Returns
        -------
        X_contaminated : ndarray or list of str
            A new array (same shape and dtype as ``X``) or a new list of
            paths, with ``n_injected_`` unlabelled rows replaced by anomalies.
        """
        kind, X, pool, rng = self._select(X, y)
        sources = self.anomaly_indices_
        if kind == "paths":
            out = list(X)
            for row, source in zip(self.injected_indices_, sources):
                out[row] = pool[source]
            return out
        out = X.copy()
        injected = add_gaussian_noise(pool[sources], self.noise_std, rng)
        out[self.injected_indices_] = injected.astype(out.dtype, copy=False)
        return out

    def transform(self, X):
        """Return ``X`` unchanged (anomalies are injected at fit time only).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or list of str
            Images or image paths.

        Returns
        -------
        X : array-like or list of str
            The input object itself.
        """
        check_is_fitted(self, "n_injected_")
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32", "uint8"]
        return tags
