"""A contamination study: ContaminationInjector + AdaptiveDeviationDetector in a Pipeline.

``ContaminationInjector.fit_transform`` replaces a fraction of the unlabelled
training images by anomalies from a pool, while ``transform`` (used at
scoring time) passes images through untouched. One Pipeline per level measures
how the test AUROC degrades as the training data gets dirtier.

Run::

    python examples/adl_contamination_study.py [--epochs 2] [--image-size 96]

on ELPV (``pip install -e ".[bench]"``); ``contamination_study`` is also run on
tiny images by the tests.
"""

import argparse

import pandas as pd
from sklearn.pipeline import make_pipeline

from skad import AdaptiveDeviationDetector, ContaminationInjector
from skad.metrics import image_auroc


def contamination_study(X_train, y_train, X_test, y_test, anomaly_pool, levels=(0.0, 0.1, 0.2),
                        random_state=0, **detector_params):
    """Test AUROC of one Pipeline per contamination level, as a DataFrame."""
    rows = []
    for level in levels:
        pipe = make_pipeline(
            ContaminationInjector(anomaly_pool, contamination=level, random_state=random_state),
            AdaptiveDeviationDetector(random_state=random_state, **detector_params),
        ).fit(X_train, y_train)
        auroc = image_auroc(y_test, -pipe.score_samples(X_test))
        injected = pipe.named_steps["contaminationinjector"].n_injected_
        rows.append({"contamination": level, "n_injected": injected, "auroc": auroc})
    return pd.DataFrame(rows)


def main():
    from skad.datasets import load_elpv
    from skad.model_selection import contaminated_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    elpv = load_elpv()
    anomalous = elpv.images[elpv.probability == 1]
    X_train, y_train, X_test, y_test = contaminated_split(
        elpv.images[elpv.probability == 0], anomalous[:400], n_labeled=10, random_state=42,
    )
    table = contamination_study(X_train, y_train, X_test, y_test, anomalous[400:],
                                image_size=args.image_size, max_epochs=args.epochs)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
