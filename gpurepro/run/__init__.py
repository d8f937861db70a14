"""A run: its directory, lock and record (run.json), and the lifecycle every kind of run goes through."""
from .directory import (RUN_JSON, STATUS_COMPLETE, STATUS_FAILED, STATUS_INTERRUPTED, RunDirectory, atomic_write,
                        now_utc, write_json)
from .lifecycle import ActiveRun, open_run
from .record import FORMAT_VERSION, KernelsInfo, RunRecord, StepSummary

__all__ = ["RUN_JSON", "STATUS_COMPLETE", "STATUS_FAILED", "STATUS_INTERRUPTED", "FORMAT_VERSION", "ActiveRun",
           "KernelsInfo", "RunDirectory", "RunRecord", "StepSummary", "atomic_write", "now_utc", "open_run",
           "write_json"]
