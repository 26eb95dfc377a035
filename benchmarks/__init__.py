"""Benchmarks: activitypool beside its peers in one run (``python -m benchmarks.bench``)."""
