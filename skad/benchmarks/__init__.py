"""skad's benchmarks as importable modules (run by ``benchmarks/*.py`` and ``skad benchmark``).

- :mod:`skad.benchmarks.elpv`: accuracy on ELPV under contamination (DRA's protocol),
  with a registry of models (:data:`skad.benchmarks.elpv.MODELS`);
- :mod:`skad.benchmarks.throughput`: images/s of a detector against the raw backbone.

Results are written under ``benchmarks/results/`` of the current directory by default.
"""
