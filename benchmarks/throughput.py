"""Throughput benchmark; the code lives in :mod:`skad.benchmarks.throughput`.

Run from the repository root (results go to ``benchmarks/results/``)::

    python benchmarks/throughput.py [--repeats 5] [--sizes 128 224] [--device cpu]
"""

from skad.benchmarks.throughput import main

if __name__ == "__main__":
    main()
