"""Benchmarks behind ``distilrec bench``: each writes JSON, a Markdown table and PNG plots.

- :mod:`distilrec.bench.loadgen`: the project's one HTTP load driver, open loop (and closed loop), which
  reports its own CPU use; the benchmarks run it in its own process, the integration and reliability
  tests through ``tests/reliability_helpers.py``;
- :mod:`distilrec.bench.serve`: ``bench serve``, four Serve applications (floor, distilrec, teacher-served,
  no-batching) measured one after the other behind the same proxy, with the same client;
- :mod:`distilrec.bench.train`: ``bench train``, teacher samples/s with 1 and 2 Ray Train workers;
- :mod:`distilrec.bench.report`: the Markdown tables, target verdicts and plots (also ``bench quality``).

Like the rest of ``distilrec/``, importing these modules does not import Ray; the commands that need a
cluster import it inside the function that runs.
"""
