"""Loader for the ELPV solar-cell dataset shipped by the ``elpv-dataset`` package."""

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .._io import read_image, to_uint8
from .._optional import import_optional

_ELPV_DESCR = """\
.. _elpv_dataset:

ELPV solar cell dataset
-----------------------

**Data Set Characteristics:**

:Number of Instances: 2,624 cells (1,074 monocrystalline, 1,550 polycrystalline)
:Image size: 300 x 300 pixels, 8-bit grayscale electroluminescence (EL) images
:Labels: defect probability in {0, 1/3, 2/3, 1} given by an expert, and the cell type
:Distribution: probability 0: 1,508 (588 mono, 920 poly); 1/3: 295; 2/3: 106;
    1: 715 (313 mono, 402 poly)
:Source: the PyPI package ``elpv-dataset`` (``elpv_dataset/data/labels.csv``)
:Licence: CC BY-NC-SA 4.0

The cells were cut from 44 EL images of photovoltaic modules, normalised in size and
perspective. ``target`` is +1 for probability 0 (defect-free) and -1 otherwise; the
anomaly-detection protocol of DevNet / DRA keeps probabilities 0 and 1 only (normal vs.
anomalous) and splits the normals with ``train_test_split(test_size=0.25,
random_state=42)`` in CSV order (1,131 train, 377 test), see
:func:`skad.model_selection.contaminated_split`.

.. topic:: References

  - Buerhop-Lutz, C., Deitsch, S., Maier, A., Gallwitz, F., Berger, S., Doll, B.,
    Hauch, J., Camus, C. and Brabec, C. J. "A Benchmark for Visual Identification of
    Defective Solar Cells in Electroluminescence Imagery." 35th EU PVSEC, 2018.
  - Deitsch, S., Christlein, V., Berger, S., Buerhop-Lutz, C., Maier, A., Gallwitz, F.
    and Riess, C. "Automatic classification of defective photovoltaic module cells in
    electroluminescence images." Solar Energy 185, 455-468, 2019.
"""


def _elpv_data_dir():
    elpv_dataset = import_optional("elpv_dataset", extra="bench", purpose="load_elpv",
                                   package="elpv-dataset")
    data_dir = Path(elpv_dataset.__file__).resolve().parent / "data"
    if not (data_dir / "labels.csv").is_file():  # pragma: no cover
        raise ImportError(
            f"The installed elpv-dataset package has no {str(data_dir / 'labels.csv')!r}; "
            "reinstall it with `pip install --force-reinstall elpv-dataset`."
        )
    return data_dir


def _read_labels(csv_path):
    """Parse ``labels.csv``: whitespace-separated ``path probability type`` rows."""
    paths, probability, cell_type = [], [], []
    with open(csv_path) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(
                    f"Line {line_number} of {str(csv_path)!r} has {len(fields)} fields, "
                    "expected 3 (path probability type)."
                )
            paths.append(fields[0])
            probability.append(float(fields[1]))
            cell_type.append(fields[2])
    return paths, np.asarray(probability, dtype=np.float64), np.asarray(cell_type, dtype=str)


def load_elpv(*, return_arrays=True):
    """Load the ELPV dataset of 2,624 solar cells (anomaly detection).

    Reads the images and labels shipped by the ``elpv-dataset`` package, in
    the order of its ``labels.csv``. Nothing is cached on disk; decoding the
    2,624 PNG files takes a few seconds.

    Read more in the dataset description (``DESCR``).

    Parameters
    ----------
    return_arrays : bool, default=True
        If True, ``images`` is a ``uint8`` array of the decoded cells. If
        False, ``images`` is the list of image file paths (nothing is
        decoded, which is instant), as with :func:`load_folder`.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        images : ndarray of shape (2624, 300, 300), dtype uint8, or list of str
            Grayscale electroluminescence images of the cells, or their paths
            with ``return_arrays=False``.
        probability : ndarray of shape (2624,), dtype float64
            Expert defect probability, one of 0, 1/3, 2/3 and 1.
        cell_type : ndarray of shape (2624,), dtype str
            ``"mono"`` or ``"poly"`` (crystalline silicon type).
        target : ndarray of shape (2624,), dtype int
            +1 where ``probability == 0`` (normal), -1 otherwise.
        filenames : ndarray of shape (2624,), dtype str
            Absolute path of each image file; usable as lazily loaded input.
        DESCR : str
            Description of the dataset.

    Raises
    ------
    ImportError
        If the ``elpv-dataset`` package is not installed.

    See Also
    --------
    skad.model_selection.contaminated_split : Build the DRA / DevNet split.

    Notes
    -----
    The DevNet / DRA anomaly-detection protocol uses probability 0 (1,508
    normal cells) against probability 1 (715 defective cells) and drops the
    uncertain 1/3 and 2/3 cells.

    Examples
    --------
    >>> from skad.datasets import load_elpv
    >>> data = load_elpv()  # doctest: +SKIP
    >>> data.images.shape  # doctest: +SKIP
    (2624, 300, 300)
    >>> paths = load_elpv(return_arrays=False)
    >>> len(paths.images), int((paths.target == 1).sum()), int((paths.probability == 1).sum())
    (2624, 1508, 715)
    """
    data_dir = _elpv_data_dir()
    paths, probability, cell_type = _read_labels(data_dir / "labels.csv")
    filenames = np.asarray([os.fspath(data_dir / p) for p in paths], dtype=str)

    if not return_arrays:
        images = filenames.tolist()
    else:
        images = _read_images(filenames)
    target = np.where(probability == 0, 1, -1)
    return Bunch(
        images=images,
        probability=probability,
        cell_type=cell_type,
        target=target,
        filenames=filenames,
        DESCR=_ELPV_DESCR,
    )


def _read_images(filenames):
    images = None
    for i, path in enumerate(filenames):
        array = to_uint8(read_image(path, mode="L"))
        if images is None:
            images = np.empty((len(filenames), *array.shape), dtype=np.uint8)
        images[i] = array
    return images
