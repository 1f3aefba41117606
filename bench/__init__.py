"""normlab's benchmarks: run them as modules (python -m bench.ops); not part of the test suite."""
