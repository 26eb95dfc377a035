"""Benchmarks: activitypool beside its peers, measured in one run (``python -m benchmarks.bench``)."""
