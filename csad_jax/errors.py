"""Error types whose message is shown to the user as one line by the CLI."""


class CSADError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""


class DataError(CSADError):
    """A dataset folder, image, mask or label file is missing or unusable."""


class WeightsError(CSADError):
    """Pretrained weights are missing, corrupt or do not match the model."""


class CheckpointError(CSADError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class ConfigError(CSADError):
    """A configuration value or command-line option is invalid."""


class TrainingError(CSADError):
    """Training cannot continue (for example a non-finite loss)."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, cut to `limit` characters.

    For third-party errors quoted inside a one-line CSADError message.
    """
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]
