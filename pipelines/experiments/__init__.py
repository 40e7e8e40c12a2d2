"""Measurements beside the workflow: the benchmark, the reproduction grid and the published result tables."""
