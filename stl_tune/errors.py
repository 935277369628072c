"""The one exception type the CLI turns into a single line for the user instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a config, a file, a study, a URL); the message is one line."""
