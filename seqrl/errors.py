"""The errors seqrl raises for bad input. Each names the thing that is wrong."""


class SeqrlError(Exception):
    """Base class: a problem with the user's input, reported without a traceback by the CLI."""


class PresetError(SeqrlError, KeyError):
    """Unknown preset, agent or key, or a value of the wrong type."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class DataError(SeqrlError, ValueError):
    """A dataset or store that is empty, corrupt, truncated, non-finite or does not match its env."""


class CheckpointError(SeqrlError, ValueError):
    """A checkpoint that is corrupt, truncated or belongs to another agent."""


class TrainingError(SeqrlError, RuntimeError):
    """Training that cannot go on: a non-finite loss, a checkpoint that cannot be written."""


class WriteError(SeqrlError, OSError):
    """A file seqrl could not write (permissions, a full disk): names the path and the reason."""
