"""Errors that end a run on purpose, each with a one-line reason a user can act on."""


class DatapoolError(Exception):
    """Base class: the message is shown to the user as is (one line, no secrets)."""


class ConfigError(DatapoolError):
    """Bad datasets.yaml or run config: raised before any work is done."""


class RunAborted(DatapoolError):
    """The run cannot proceed (nothing new, non-empty dataset without use_datapool, ...).

    Nothing has been committed when this is raised.
    """


class CommittedButIncomplete(DatapoolError):
    """The run committed its tag, then a later step (the report) failed: the datapool is complete."""


class ConcurrentCommitError(RunAborted):
    """Another run committed to the same datapool first; this run's tag was not written."""


class DamagedStateError(DatapoolError):
    """The datapool state in the output is damaged (a manifest or table part that does not parse, is
    missing or disagrees with its manifest); the message names the damaged object. Nothing is written."""
