"""Errors a user can fix. The CLI prints their message as one sentence, with no traceback."""


class UserError(Exception):
    """An expected failure (bad parameter, missing credentials, no network, no disk space).

    The message must say what went wrong and what to do; the CLI exits non-zero with it.
    """


class ConfigError(UserError):
    """A wrong key, type or value in params.yaml or a --set override."""
