"""Test-only crash switch: `DATAPOOL_FAULT_INJECT=<point>` SIGKILLs the process at that point.

Points: after_file_status (in the embeddings step, between a shard's files.parquet and its embeddings),
after_embeddings, after_selection, mid_upload, after_upload, after_commit;
and mid_checkpoint (between the parts of a checkpoint, datapool/store.py: not in FAULT_POINTS, the
run-level crash tests commit too few tags to write one; test_checkpoints.py uses it).
Used by the crash-safety tests; never set it in production.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "DATAPOOL_FAULT_INJECT"
FAULT_POINTS = (
    "after_file_status", "after_embeddings", "after_selection", "mid_upload", "after_upload", "after_commit",
)


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
