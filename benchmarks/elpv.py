"""ELPV benchmark; the code lives in :mod:`skad.benchmarks.elpv` (see its docstring).

Run from the repository root (results go to ``benchmarks/results/``)::

    python benchmarks/elpv.py [--seeds 42 43 44] [--models "NN reference" "ADL full"] ...
"""

from skad.benchmarks.elpv import main

if __name__ == "__main__":
    main()
