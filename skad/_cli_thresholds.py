"""``skad score``'s threshold options: ``--threshold`` and ``--max-fpr`` + ``--calibration``.

Kept apart from :mod:`skad.cli` (which imports this module only when scoring) so that the
command module stays readable; errors are ``ValueError``, which the command prints as a
user error.
"""

__all__ = ["apply_threshold", "check_threshold_options"]


def check_threshold_options(args):
    """Refuse inconsistent threshold options before any work.

    Parameters
    ----------
    args : argparse.Namespace
        ``skad score``'s arguments (``threshold``, ``max_fpr``, ``calibration``).

    Raises
    ------
    ValueError
        If ``--max-fpr`` is outside (0, 1), or only one of ``--max-fpr`` and
        ``--calibration`` is given.
    """
    if args.max_fpr is not None and not 0 < args.max_fpr < 1:
        raise ValueError(f"--max-fpr must be in (0, 1), e.g. 0.01; got {args.max_fpr}.")
    if args.max_fpr is not None and args.calibration is None:
        raise ValueError("--max-fpr needs --calibration DIR, a folder of held-out good "
                         "images to set the threshold on.")
    if args.calibration is not None and args.max_fpr is None:
        raise ValueError("--calibration needs --max-fpr RATE, the share of good images "
                         "that may be flagged (e.g. --max-fpr 0.01).")


def apply_threshold(det, args, calibration=None):
    """Set the loaded model's threshold from the options; return a line saying which.

    Parameters
    ----------
    det : detector or Pipeline
        The loaded model; a pipeline's last step receives the threshold.
    args : argparse.Namespace
        ``skad score``'s arguments.
    calibration : tuple of (list of str, ndarray or None), default=None
        The ``--calibration`` folder's image paths and tree labels (None for a
        plain folder); only its normal images set the threshold.

    Returns
    -------
    message : str or None
        What was set, or None when the model's own threshold is kept.
    """
    from .pipeline import final_detector
    from .thresholds import calibrate

    if args.threshold is not None:
        final_detector(det).offset_ = -float(args.threshold)
        return (f"Threshold {args.threshold:g} (--threshold): anomaly_score above it is "
                "predicted anomalous")
    if args.max_fpr is None:
        return None
    paths, target = calibration
    calibrate(det, paths, target, max_fpr=args.max_fpr)
    info = final_detector(det).calibration_
    return (f"Threshold {info['threshold']:.6g} from {info['n_normal']} good images of "
            f"{args.calibration} (--max-fpr {args.max_fpr:g}: {info['false_alarms']} of them "
            f"flagged; expected false-alarm rate on new good images "
            f"{info['expected_false_alarm_rate']:.3f})")
