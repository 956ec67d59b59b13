"""Benchmarks: the pipeline against its baselines, ghz load profiles, queries."""
