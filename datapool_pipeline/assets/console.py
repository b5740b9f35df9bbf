"""The jobs' console logger: Dagster's colored console logger, except that a step failure raised as a
`dagster.Failure` (an abort: factory.py turns RunAborted / ConfigError into one) is printed as its one-line
reason without the stack trace of the raise, the same line the CLI ends with. Any other error keeps its
stack trace. The event log (UI, GraphQL) is untouched: it shows the Failure's description anyway."""

from __future__ import annotations

import logging

import dagster as dg
from dagster._loggers import colored_console_logger

_FAILURE = f"{dg.Failure.__module__}.{dg.Failure.__qualname__}: "  # how Dagster names it in an error line
_STACK = "\nStack Trace:\n"


class _AbortsWithoutStack(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        head, stack, _ = message.partition(_STACK)
        if stack and _FAILURE in head:
            record.msg, record.args = head.rstrip(), None
        return True


@dg.logger(config_schema=colored_console_logger.config_schema, description=__doc__.splitlines()[0])
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = colored_console_logger.logger_fn(init_context)
    logger.addFilter(_AbortsWithoutStack())
    return logger


LOGGERS = {"console": console_logger}
