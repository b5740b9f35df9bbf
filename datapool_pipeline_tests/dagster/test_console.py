"""The jobs' console logger prints an abort as its reason and keeps the stack trace of any other error."""

from __future__ import annotations

import logging

import dagster as dg

from datapool_pipeline.assets.console import _AbortsWithoutStack, console_logger
from datapool_pipeline.definitions import build_definitions


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("dagster", logging.ERROR, __file__, 1, message, None, None)


def test_an_abort_loses_its_stack_trace_any_other_error_keeps_it() -> None:
    head = ('Execution of step "clips__selection" failed.\n\ndagster._core.definitions.events.Failure: nothing '
            "left to add: the 4 new sample(s) are exact copies of datapool samples\n")
    stack = '\nStack Trace:\n  File "factory.py", line 63, in wrapper\n    raise dg.Failure(...)\n'
    abort = _record(head + stack)
    assert _AbortsWithoutStack().filter(abort) and abort.getMessage() == head.rstrip()
    bug = _record(head.replace("dagster._core.definitions.events.Failure", "ZeroDivisionError") + stack)
    assert _AbortsWithoutStack().filter(bug) and "Stack Trace" in bug.getMessage()


def test_every_job_uses_it(tmp_path, monkeypatch) -> None:
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text(f"datasets:\n  clips:\n    type: VIDEOS\n    input: {tmp_path / 'in'}\n"
                        f"    output: {tmp_path / 'out'}\n")
    monkeypatch.setenv("DATAPOOL_DATASETS", str(datasets))
    defs = build_definitions()
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]
    assert jobs and all(job.loggers["console"] is console_logger for job in jobs)
    assert isinstance(console_logger, dg.LoggerDefinition)
