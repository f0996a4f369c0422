"""Pipelines that end in a skad detector: the detector, and its input, through the pipeline.

A :class:`~sklearn.pipeline.Pipeline` passes ``score_samples``,
``decision_function`` and ``predict`` to its last step after its transformers,
but it knows nothing of a detector's ``localize`` (nor of its ``offset_``).
These helpers apply the pipeline's transformers to the images, in order, and
hand the result to the detector, so that anomaly maps, evaluation, thresholds
and export work on a pipeline as they do on a bare detector.
:func:`skad.metrics.evaluate` and :func:`skad.thresholds.calibrate` use them.

This module imports neither torch nor any detector.
"""

from sklearn.pipeline import Pipeline

__all__ = ["final_detector", "localize", "transform_to_detector"]


def final_detector(estimator):
    """The estimator a pipeline ends in (the estimator itself when it is not a pipeline).

    Nested pipelines are followed down to their last step.

    Parameters
    ----------
    estimator : estimator or Pipeline
        A detector, or a :class:`~sklearn.pipeline.Pipeline` whose last step
        is one.

    Returns
    -------
    detector : estimator
        The last step.

    Examples
    --------
    >>> from sklearn.ensemble import IsolationForest
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skad.pipeline import final_detector
    >>> final_detector(make_pipeline(StandardScaler(), IsolationForest()))
    IsolationForest()
    """
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def transform_to_detector(estimator, X):
    """Apply a pipeline's transformers to ``X``; return its final detector and the result.

    Steps set to ``None`` or ``"passthrough"`` are skipped, as
    :class:`~sklearn.pipeline.Pipeline` does. For an estimator that is not a
    pipeline, ``X`` is returned as given.

    Parameters
    ----------
    estimator : estimator or Pipeline
        A fitted detector, or a fitted pipeline whose last step is one.
    X : array-like or sequence of image paths
        Input of the pipeline.

    Returns
    -------
    detector : estimator
        The pipeline's last step (see :func:`final_detector`).
    Xt : object
        ``X`` transformed by every step before it (each step's
        ``transform``, not ``fit_transform``: a
        :class:`~skad.preprocessing.ContaminationInjector` passes the images
        through untouched, as when the pipeline predicts).
    """
    while isinstance(estimator, Pipeline):
        for _, step in estimator.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            X = step.transform(X)
        estimator = estimator.steps[-1][1]
    return estimator, X


def localize(estimator, X):
    """Anomaly maps of a detector, or of a pipeline whose last step is a detector.

    The pipeline's transformers are applied first (:func:`transform_to_detector`),
    then the detector's ``localize``.

    Parameters
    ----------
    estimator : detector or Pipeline
        A fitted skad detector, or a fitted pipeline ending in one.
    X : array-like of images or sequence of image paths
        Input of the pipeline.

    Returns
    -------
    maps : ndarray of shape (n, H, W), dtype float32, or list of arrays
        What the detector's :meth:`~skad.base.BaseDetector.localize` returns
        for the transformed images: higher is more anomalous.

    Raises
    ------
    TypeError
        If the final step has no ``localize`` method.

    See Also
    --------
    skad.base.BaseDetector.localize : The detector's own method.
    skad.metrics.evaluate : Pixel-level metrics, through a pipeline too.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from skad import ContaminationInjector, PatchCoreDetector
    >>> from skad.pipeline import localize
    >>> pipe = make_pipeline(ContaminationInjector(pool), PatchCoreDetector())  # doctest: +SKIP
    >>> maps = localize(pipe.fit(X, y), X_test)  # doctest: +SKIP
    """
    detector, Xt = transform_to_detector(estimator, X)
    if not callable(getattr(detector, "localize", None)):
        where = "the last step of the pipeline" if isinstance(estimator, Pipeline) else "it"
        raise TypeError(
            f"{type(detector).__name__} has no localize method, so {where} gives no anomaly "
            "maps; end the pipeline with a skad detector (e.g. PatchCoreDetector)."
        )
    return detector.localize(Xt)
