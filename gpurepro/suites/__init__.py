"""Suites: what a run does inside its lifecycle, as a short list of named stages.

`repro` (compile, arch-check, run and classify repro steps) and `kernels` (pytest over tests/kernels where the
kernels run). Replays and the nightly use these suites, never each other's internals.
"""
