"""skad's benchmarks as importable modules (run by ``benchmarks/*.py`` and ``skad benchmark``).

- :mod:`skad.benchmarks.elpv`: accuracy on ELPV under contamination (DRA's protocol),
  with a registry of models (:data:`skad.benchmarks.elpv.MODELS`);
- :mod:`skad.benchmarks.throughput`: images/s of a detector against the raw backbone.

Results are written under ``benchmarks/results/`` of the current directory by default.
"""

from .._optional import import_optional


def require_bench_extra(purpose):
    """Fail early, before any work, when the ``bench`` extra's table writer is missing.

    The benchmarks write Markdown tables (pandas' ``to_markdown`` needs
    ``tabulate``); checking at the start saves a long run that would fail at
    its last line.
    """
    import_optional("tabulate", extra="bench", purpose=purpose)
