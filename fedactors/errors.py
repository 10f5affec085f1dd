"""Errors a user can cause or meet; the CLI maps each class to one line and an exit status."""


class FedActorsError(Exception):
    """Base class. `exit_code` is what the CLI exits with; the message is the one line it prints."""

    exit_code = 2


class ConfigError(FedActorsError):
    """A flag or configuration value is out of range or inconsistent."""


class DataError(FedActorsError):
    """The data set is missing, unreadable or not what it claims to be."""


class ClusterError(FedActorsError):
    """Ray cannot be started or reached, or cannot give the resources asked for."""


class CheckpointError(FedActorsError):
    """A checkpoint is corrupt, foreign, of another format version or another configuration."""


class StoreUnavailable(FedActorsError):
    """The checkpoint store could not be reached (or stayed down past the retry budget)."""

    exit_code = 3


class RoundFailed(FedActorsError):
    """A round could not be completed with the updates the configuration requires."""

    exit_code = 1


class InternalError(FedActorsError):
    """Something fedactors did not expect (a bug, or an environment it does not know); the traceback is kept."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error that names it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
