"""Splits for anomaly detection with contaminated training data and a few labelled anomalies.

:func:`contaminated_split` builds the training and test sets of the DevNet /
DRA / ADL protocol; :class:`LabelledAnomalyKFold` is the cross-validation
splitter for ``GridSearchCV`` and ``cross_val_score`` on such a training set,
which keeps labelled anomalies in every fold.
"""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils import Bunch, check_random_state

from ._image_sets import add_gaussian_noise, check_image_set, check_same_layout, take
from ._labels import is_anomaly_from_labels

__all__ = ["LabelledAnomalyKFold", "contaminated_split", "n_contaminants"]


class LabelledAnomalyKFold(StratifiedKFold):
    """K-fold cross-validation that keeps labelled anomalies in every fold.

    A :class:`~sklearn.model_selection.StratifiedKFold` on "labelled anomaly
    or not" that refuses, with a message saying what to change, to make a
    fold without a labelled anomaly (or without an unlabelled image), where
    ``roc_auc`` and average precision are undefined: ``GridSearchCV`` would
    record NaN for that fold. Detectors are outlier detectors, not
    classifiers, so ``GridSearchCV(det, ..., cv=3)`` splits with an
    unstratified :class:`~sklearn.model_selection.KFold`; pass
    ``cv=LabelledAnomalyKFold(3)`` instead.

    Each validation fold holds ``n_anomalous / n_splits`` labelled
    anomalies (rounded), and each training fold the others, so that both
    the fit and the score see labelled anomalies.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2 and at most the number of labelled
        anomalies.
    shuffle : bool, default=False
        Shuffle each class before splitting (see
        :class:`~sklearn.model_selection.StratifiedKFold`).
    random_state : int, RandomState instance or None, default=None
        Controls the shuffling when ``shuffle=True``.

    See Also
    --------
    sklearn.model_selection.StratifiedKFold : What this splitter is, plus the checks.
    contaminated_split : The training and test sets this splitter cross-validates on.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.model_selection import LabelledAnomalyKFold
    >>> y = np.r_[np.ones(9), -np.ones(3)].astype(int)
    >>> [int((y[test] == -1).sum()) for _, test in LabelledAnomalyKFold(3).split(y, y)]
    [1, 1, 1]
    >>> next(LabelledAnomalyKFold(4).split(y, y))
    Traceback (most recent call last):
    ...
    ValueError: y has 3 labelled anomalies (-1) but n_splits=4: every validation fold needs \
one. Pass LabelledAnomalyKFold(n_splits=3) or fewer, or label more anomalies.
    """

    def split(self, X, y, groups=None):
        """Generate indices of the training and validation rows of each fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or sequence of paths
            Training data; only its length is used.
        y : array-like of shape (n_samples,)
            ``-1`` for a labelled anomaly, ``+1`` for an unlabelled image.
        groups : object
            Ignored.

        Yields
        ------
        train : ndarray
            Training rows of the fold.
        test : ndarray
            Validation rows of the fold.
        """
        if y is None:
            raise ValueError(
                "LabelledAnomalyKFold needs y (-1 labelled anomaly, +1 unlabelled) to keep "
                "labelled anomalies in every fold; pass split(X, y), or GridSearchCV.fit(X, y)."
            )
        is_anomaly = is_anomaly_from_labels(y, both_classes=False)
        n_anomalous = int(is_anomaly.sum())
        n_other = len(is_anomaly) - n_anomalous
        if n_anomalous == 0:
            raise ValueError(
                "y has no labelled anomaly (-1), so no fold can be scored by roc_auc or "
                "average precision. Label some anomalies, or select parameters without "
                "cross-validation (e.g. on a held-out labelled set)."
            )
        for count, what, fix in ((n_anomalous, "labelled anomalies (-1)", "label more anomalies"),
                                 (n_other, "unlabelled images (+1)", "pass more images")):
            if count < self.n_splits:
                raise ValueError(
                    f"y has {count} {what} but n_splits={self.n_splits}: every validation fold "
                    f"needs one. Pass LabelledAnomalyKFold(n_splits={count}) or fewer, or "
                    f"{fix}."
                )
        yield from super().split(X, is_anomaly, groups)

# Guards the floor in n_contaminants against r / (1 - r) * n landing just below an integer.
_FLOOR_TOLERANCE = 1e-9


def n_contaminants(contamination, n_normal):
    """Number of contaminants for a contamination ratio (ADL / DRA protocol).

    ``n_c = floor(r / (1 - r) * n_normal)``, so that contaminants make up a
    share ``r`` of the ``n_normal + n_c`` training rows labelled normal.

    Parameters
    ----------
    contamination : float
        Contamination ratio ``r`` in [0, 0.5].

    n_normal : int
        Number of normal training images.

    Returns
    -------
    n_c : int
        Number of anomalies to add to the training set labelled normal.

    Examples
    --------
    >>> from skad.model_selection import n_contaminants
    >>> n_contaminants(0.1, 1131), n_contaminants(0.2, 1131)
    (125, 282)
    """
    if not isinstance(contamination, Real) or not 0.0 <= contamination <= 0.5:
        raise ValueError(
            f"contamination must be a float in [0, 0.5]; got {contamination!r}. Use e.g. "
            "contamination=0.1 for 10% contaminated normal data."
        )
    if not isinstance(n_normal, Integral) or n_normal < 0:
        raise ValueError(f"n_normal must be a non-negative int; got {n_normal!r}.")
    r = float(contamination)
    return int(math.floor(r / (1.0 - r) * int(n_normal) + _FLOOR_TOLERANCE))


def _empty_masks(masks, n):
    if isinstance(masks, np.ndarray):
        return np.zeros((n, *masks.shape[1:]), dtype=masks.dtype)
    return [None] * n


def _check_masks(masks_anomalous, n_anomalous):
    if masks_anomalous is None:
        return None
    if isinstance(masks_anomalous, list | tuple):
        masks = list(masks_anomalous)
    else:
        masks = np.asarray(masks_anomalous)
        if masks.ndim < 2:
            raise ValueError(
                "masks_anomalous must be an array of shape (n_anomalous, H, W) or a list of "
                f"mask paths (None where missing); got an array of shape {masks.shape}."
            )
    if len(masks) != n_anomalous:
        raise ValueError(
            f"masks_anomalous has {len(masks)} masks but X_anomalous has {n_anomalous} images; "
            "pass one mask per anomalous image."
        )
    return masks


def _check_groups(groups, seen_groups, n_anomalous):
    """Return a boolean 'seen' mask over the anomalies, or None for the general setting."""
    if groups is None and seen_groups is None:
        return None
    if groups is None:
        raise ValueError(
            "seen_groups needs groups: pass groups=<one group label per anomalous image>."
        )
    if seen_groups is None:
        raise ValueError(
            "groups needs seen_groups: pass seen_groups=<the group(s) labelled anomalies are "
            "drawn from>, e.g. seen_groups='mono'."
        )
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_anomalous:
        raise ValueError(
            f"groups must be 1-D with one label per anomalous image ({n_anomalous}); got shape "
            f"{groups.shape}."
        )
    if np.ndim(seen_groups) == 0:
        seen_groups = [seen_groups]
    seen_groups = np.asarray(seen_groups)
    present = np.unique(groups)
    unknown = [g for g in seen_groups.tolist() if g not in present.tolist()]
    if unknown:
        raise ValueError(
            f"seen_groups {unknown} not found in groups; available groups: {present.tolist()}."
        )
    seen = np.isin(groups, seen_groups)
    if seen.all():
        raise ValueError(
            "seen_groups covers every group, which leaves no unseen anomaly to test on; "
            f"choose a subset of {present.tolist()}."
        )
    return seen


def contaminated_split(
    X_normal,
    X_anomalous,
    *,
    n_labeled=10,
    contamination=0.0,
    test_size=0.25,
    groups=None,
    seen_groups=None,
    noise_std=0.0,
    masks_anomalous=None,
    random_state=None,
    return_indices=False,
):
    """Split normal and anomalous images into a contaminated training set and a test set.

    The protocol of DevNet, DRA and ADL with the few-labelled-anomalies,
    contaminated-training setting:

    1. The normal images are split with
       ``train_test_split(np.arange(n_normal), test_size=test_size,
       random_state=random_state)``, in the order given.
    2. ``n_labeled`` anomalies enter the training set with ``y = -1``.
    3. ``n_c = floor(r / (1 - r) * n_train_normal)`` other anomalies
       (contaminants, disjoint from the labelled ones) enter the training set
       with ``y = +1``, optionally with additive Gaussian noise.
    4. The remaining anomalies form the anomalous part of the test set
       (``y = -1``): labelled anomalies and contaminants are removed from it,
       so nothing seen in training is tested on.

    Parameters
    ----------
    X_normal : array-like of shape (n_normal, ...) or list of str
        Normal images, as an array (any image layout) or a list of file paths.

    X_anomalous : array-like of shape (n_anomalous, ...) or list of str
        Anomalous images, in the same form, image shape and dtype family as
        ``X_normal``.

    n_labeled : int, default=10
        Number of labelled anomalies in the training set.

    contamination : float, default=0.0
        Contamination ratio ``r`` in [0, 0.5]: the share of anomalies among the
        training rows labelled +1. See :func:`n_contaminants`.

    test_size : float or int, default=0.25
        Fraction (float) or number (int) of normal images in the test set,
        passed to :func:`~sklearn.model_selection.train_test_split`.

    groups : array-like of shape (n_anomalous,), default=None
        Group (anomaly type) of each anomalous image, for the hard setting.
        Requires ``seen_groups``.

    seen_groups : object or list, default=None
        Group(s) the labelled anomalies are drawn from. Test anomalies are the
        anomalies of the other groups only; anomalies of the seen groups that
        are neither labelled nor contaminants are discarded. Contaminants are
        drawn from all groups (contamination is not restricted to known
        anomaly types), after the labelled anomalies.

    noise_std : float, default=0.0
        Standard deviation of additive Gaussian noise on the contaminants, in
        0-255 intensity units: uint8 images get ``noise_std`` (rounded,
        clipped to 0..255), float images (assumed in [0, 1]) get
        ``noise_std / 255`` (clipped to [0, 1]). The dtype is kept. Only for
        arrays. ADL's code uses 2.0.

    masks_anomalous : array-like of shape (n_anomalous, H, W) or list, default=None
        Pixel masks of the anomalous images (an array, or a list of mask
        paths with None where missing). If given, the masks of the test set
        are returned too, all zeros (or None) for normal images.

    random_state : int, RandomState instance or None, default=None
        Controls the normal split (passed to ``train_test_split`` as is), the
        choice of labelled anomalies and contaminants, the noise and the
        training order. Pass an int for reproducible output; ``42`` with the
        ELPV normals in CSV order reproduces DRA's split.

    return_indices : bool, default=False
        Also return a :class:`~sklearn.utils.Bunch` of indices, for
        reproducibility audits.

    Returns
    -------
    X_train : ndarray or list of str
        Training images: the training normals, the labelled anomalies and
        the contaminants, shuffled.

    y_train : ndarray of shape (n_train,)
        -1 for labelled anomalies, +1 for normals and contaminants.

    X_test : ndarray or list of str
        Test images: the test normals (in ``train_test_split`` order), then
        the test anomalies (in their original order).

    y_test : ndarray of shape (n_test,)
        +1 for normal images, -1 for anomalous ones.

    masks_test : ndarray of shape (n_test, H, W) or list
        Test masks, only when ``masks_anomalous`` is given.

    indices : :class:`~sklearn.utils.Bunch`
        Only when ``return_indices=True``, with ``normal_train``,
        ``normal_test`` (indices into ``X_normal``), ``labeled``,
        ``contaminant``, ``anomalous_test`` (indices into ``X_anomalous``),
        ``train`` and ``test`` (for each returned row, its index into the
        concatenation of ``X_normal`` and ``X_anomalous``) and
        ``train_contaminant`` (boolean mask of the contaminant rows of
        ``X_train``).

    See Also
    --------
    n_contaminants : The number of contaminants for a ratio.
    skad.preprocessing.ContaminationInjector : Contaminate inside a pipeline.

    Notes
    -----
    Unlike the authors' code of ADL and DRA, contaminants are removed from the
    test set; keeping them there would test on training images.

    Examples
    --------
    >>> import numpy as np
    >>> from skad.model_selection import contaminated_split
    >>> X_normal = np.zeros((40, 8, 8), dtype=np.uint8)
    >>> X_anomalous = np.full((20, 8, 8), 255, dtype=np.uint8)
    >>> X_train, y_train, X_test, y_test = contaminated_split(
    ...     X_normal, X_anomalous, n_labeled=2, contamination=0.1, random_state=0)
    >>> X_train.shape, int((y_train == -1).sum()), X_test.shape, int((y_test == -1).sum())
    ((35, 8, 8), 2, (25, 8, 8), 15)
    """
    kind_n, X_normal = check_image_set(X_normal, "X_normal")
    kind_a, X_anomalous = check_image_set(X_anomalous, "X_anomalous")
    check_same_layout(kind_n, X_normal, "X_normal", kind_a, X_anomalous, "X_anomalous")
    n_normal, n_anomalous = len(X_normal), len(X_anomalous)
    if not isinstance(n_labeled, Integral) or isinstance(n_labeled, bool) or n_labeled < 0:
        raise ValueError(f"n_labeled must be a non-negative int; got {n_labeled!r}.")
    if not isinstance(noise_std, Real) or noise_std < 0:
        raise ValueError(
            f"noise_std must be a non-negative float (0-255 units); got {noise_std!r}."
        )
    if noise_std > 0 and kind_n == "paths":
        raise ValueError(
            "noise_std > 0 needs image arrays; X_normal and X_anomalous are lists of paths. "
            "Load the images (e.g. load_folder(..., return_arrays=True)) or set noise_std=0."
        )
    n_contaminants(contamination, 0)  # validates contamination before any work
    masks = _check_masks(masks_anomalous, n_anomalous)
    seen = _check_groups(groups, seen_groups, n_anomalous)

    # The normal split first, with random_state as given, so that an int reproduces
    # train_test_split on the normals alone (DRA's ELPV split for random_state=42).
    normal_train, normal_test = train_test_split(
        np.arange(n_normal), test_size=test_size, random_state=random_state
    )
    n_c = n_contaminants(contamination, len(normal_train))
    rng = check_random_state(random_state)

    if seen is None:
        needed = n_labeled + n_c + 1
        if n_anomalous < needed:
            raise ValueError(
                f"Not enough anomalies: n_labeled={n_labeled} labelled + {n_c} contaminants "
                f"(contamination={contamination} with {len(normal_train)} training normals) + "
                f"at least 1 for testing = {needed} needed, but X_anomalous has {n_anomalous}. "
                "Lower n_labeled or contamination."
            )
        order = rng.permutation(n_anomalous)
        labeled = order[:n_labeled]
        contaminant = order[n_labeled : n_labeled + n_c]
        anomalous_test = np.sort(order[n_labeled + n_c :])
    else:
        seen_idx, unseen_idx = np.flatnonzero(seen), np.flatnonzero(~seen)
        if len(seen_idx) < n_labeled:
            raise ValueError(
                f"Not enough anomalies in seen_groups: n_labeled={n_labeled} needed, but the "
                f"seen groups hold {len(seen_idx)}. Lower n_labeled or add groups."
            )
        labeled = rng.permutation(seen_idx)[:n_labeled]
        available = np.setdiff1d(np.arange(n_anomalous), labeled)
        if len(available) < n_c + 1:
            raise ValueError(
                f"Not enough anomalies: n_labeled={n_labeled} labelled + {n_c} contaminants "
                f"(contamination={contamination} with {len(normal_train)} training normals) + "
                f"at least 1 unseen for testing = {n_labeled + n_c + 1} needed, but "
                f"X_anomalous has {n_anomalous}. Lower n_labeled or contamination."
            )
        contaminant = rng.permutation(available)[:n_c]
        anomalous_test = np.setdiff1d(unseen_idx, contaminant)
        if len(anomalous_test) == 0:
            raise ValueError(
                f"The {n_c} contaminants use up all {len(unseen_idx)} anomalies of the unseen "
                "groups, leaving none to test on; lower contamination."
            )

    # Rows of the concatenation [X_normal; X_anomalous].
    train = np.concatenate([normal_train, n_normal + labeled, n_normal + contaminant])
    y_train = np.concatenate(
        [np.ones(len(normal_train), int), -np.ones(n_labeled, int), np.ones(n_c, int)]
    )
    is_contaminant = np.concatenate(
        [np.zeros(len(normal_train) + n_labeled, bool), np.ones(n_c, bool)]
    )
    shuffle = rng.permutation(len(train))
    train, y_train, is_contaminant = train[shuffle], y_train[shuffle], is_contaminant[shuffle]
    test = np.concatenate([normal_test, n_normal + anomalous_test])
    y_test = np.concatenate([np.ones(len(normal_test), int), -np.ones(len(anomalous_test), int)])

    def gather(rows):
        from_normal = rows < n_normal
        if kind_n == "paths":
            return [X_normal[r] if r < n_normal else X_anomalous[r - n_normal] for r in rows]
        shape = (len(rows), *X_normal.shape[1:])
        out = np.empty(shape, dtype=np.result_type(X_normal.dtype, X_anomalous.dtype))
        out[from_normal] = X_normal[rows[from_normal]]
        out[~from_normal] = X_anomalous[rows[~from_normal] - n_normal]
        return out

    X_train, X_test = gather(train), gather(test)
    if noise_std > 0 and n_c > 0:
        X_train[is_contaminant] = add_gaussian_noise(X_train[is_contaminant], noise_std, rng)

    result = [X_train, y_train, X_test, y_test]
    if masks is not None:
        test_masks = take(
            "array" if isinstance(masks, np.ndarray) else "paths", masks, anomalous_test
        )
        if isinstance(masks, np.ndarray):
            masks_test = np.concatenate([_empty_masks(masks, len(normal_test)), test_masks])
        else:
            masks_test = _empty_masks(masks, len(normal_test)) + test_masks
        result.append(masks_test)
    if return_indices:
        result.append(
            Bunch(
                normal_train=normal_train,
                normal_test=normal_test,
                labeled=labeled,
                contaminant=contaminant,
                anomalous_test=anomalous_test,
                train=train,
                test=test,
                train_contaminant=is_contaminant,
            )
        )
    return tuple(result)
