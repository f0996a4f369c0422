"""How often ``contamination="auto"`` flags normal images: training images vs new ones.

PaDiM's fence uses in-sample scores (the training images against Gaussians
fitted on themselves); PatchCore's uses leave-own-image-out scores. This
script measures the share of flagged training images, test normal images and
test anomalies on ELPV (clean training set, 10 labelled anomalies, 128 px).

Run from the repository root::

    python benchmarks/auto_threshold.py [--seed 42] [--contamination 0.0]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks/auto_threshold.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--contamination", type=float, default=0.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/auto_threshold.md")
    args = parser.parse_args(argv)

    from skad import PaDiMDetector, PatchCoreDetector
    from skad._images import resize_images
    from skad.datasets import load_elpv
    from skad.model_selection import contaminated_split

    elpv = load_elpv()
    images = resize_images(elpv.images, args.image_size)
    X_train, y_train, X_test, y_test = contaminated_split(
        images[elpv.probability == 0], images[elpv.probability == 1], n_labeled=10,
        contamination=args.contamination, random_state=args.seed,
    )
    rows = []
    for cls in (PaDiMDetector, PatchCoreDetector):
        det = cls(image_size=args.image_size, random_state=args.seed).fit(X_train, y_train)
        flagged_test = det.predict(X_test) == -1
        rows.append({
            "detector": cls.__name__,
            "flagged unlabelled training images": np.mean(det.predict(X_train[y_train == 1]) == -1),
            "flagged test normals": np.mean(flagged_test[y_test == 1]),
            "flagged test anomalies": np.mean(flagged_test[y_test == -1]),
        })
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")
    Path(args.out).write_text(
        "# contamination='auto': share of images flagged (ELPV)\n\n"
        f"Command: `python benchmarks/auto_threshold.py --seed {args.seed} --contamination "
        f"{args.contamination}` ({args.image_size} px, 10 labelled anomalies).\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
