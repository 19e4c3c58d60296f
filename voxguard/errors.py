"""Errors that reach users.  Each carries the process exit code the CLI uses."""


class VoxguardError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = 2
    kind: str | None = None  # the error's name in --json output (default: the class name)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AudioError(VoxguardError):
    """A file could not be used as audio (missing, undecodable, empty, too short)."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class StoreError(VoxguardError):
    """The speaker store cannot be opened or does not hold what was asked for."""


class StoreMissing(StoreError):
    """There is no store at the location yet (nothing enrolled)."""

    kind = "StoreError"  # as before this class existed


class StoreReadOnly(StoreError):
    """The store can be read but not written (a read-only file system, file or directory)."""


class EmbedderMismatch(StoreError):
    """Embeddings from a different embedder would be mixed into a store."""


class UnknownSpeaker(StoreError):
    def __init__(self, name: str):
        super().__init__(f"unknown speaker {name!r} (see 'voxguard enroll list')")
        self.name = name


class UnknownSample(StoreError):
    def __init__(self, speaker: str, sample_id: int):
        super().__init__(f"speaker {speaker!r} has no sample {sample_id}")
        self.speaker, self.sample_id = speaker, sample_id


class ModelError(VoxguardError):
    """An embedder or cloning model cannot be loaded."""
