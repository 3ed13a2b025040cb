"""Experiments built on the library: the demo, the efficacy study and its statistics and reports, the run
recipes they share, and the benchmarks behind ``dtgnet bench``."""
