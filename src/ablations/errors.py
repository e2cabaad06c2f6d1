"""The one exception type the command line turns into a clear message and exit code 2."""


class AblationsError(Exception):
    """A user-facing error: the message names the key, file or value and what is allowed."""


class ConfigError(AblationsError):
    """params.yaml is invalid (unknown key, wrong type, value out of range...)."""


class DataError(AblationsError):
    """A dataset file is missing, corrupt, has a wrong checksum or an unsafe archive member."""
