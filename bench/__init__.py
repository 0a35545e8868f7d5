"""Benchmarks of the delivery engine and the store (not part of the test suite); see bench/README.md."""
