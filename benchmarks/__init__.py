"""Benchmarks: `python -m benchmarks.run NAME` (see benchmarks/run.py); workloads in benchmarks/workloads.py."""
