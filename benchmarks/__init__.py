"""asv benchmark suite of mimfast (configuration: ``asv.conf.json`` in this folder).

Modules ``bench_*.py`` hold the benchmarks, :mod:`common` their seeded inputs.
``mc_comparison.py`` is a plain script (Monte Carlo explicit model against the exact
gradient), not an asv benchmark: it imports torch only when run.
"""
