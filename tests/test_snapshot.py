"""Every detector still gives the recorded numbers (``tests/data/snapshot.npz``).

The file was recorded before the detector base was split into its trained and
frozen-feature halves; a refactoring must leave scores, maps and offsets as
they were. See ``tests/_snapshot.py`` for how to re-record after a deliberate
change.
"""

import numpy as np
import pytest
from _snapshot import PATH, record


@pytest.fixture(scope="module")
def recorded():
    with np.load(PATH) as stored:
        return dict(stored)


@pytest.fixture(scope="module")
def today():
    return record()


def test_snapshot_covers_every_detector(recorded):
    import skad

    names = {key.split("/")[0].split("-")[0] for key in recorded}
    assert names == {n for n in skad.__all__ if n.endswith("Detector")}


def test_outputs_equal_the_recorded_ones(recorded, today):
    assert sorted(today) == sorted(recorded)
    for key in sorted(recorded):
        np.testing.assert_allclose(today[key], recorded[key], rtol=1e-6, atol=1e-6,
                                   err_msg=key)
