"""Benchmarks (not collected by pytest): ``hil bench`` runs ``bench_emulator``; the others with ``python -m``.

* ``hil bench [--json]`` / ``python -m tests.benchmarks.bench_emulator``: emulator MVM and pulse speed
  against a plain torch matmul of the same shape;
* ``python -m tests.benchmarks.bench_runs``: journaling overhead and run-file write throughput;
* ``python -m tests.benchmarks.bench_protocols``: time to program a core and the whole chip;
* ``python -m tests.benchmarks.bench_drivers``: the lab path (emulator behind the board server).
"""
