"""The one exception type the CLI turns into a single line for the user instead of a traceback, and
its kind for studies. A leaf (it imports nothing), so that any module can raise them."""


class UserError(Exception):
    """Bad input from the user (a config, a file, a study, a URL); the message is one line."""


class StudyError(UserError):
    """A bad study file, study name or storage URL (search/spec/space.py, search/storage/urls.py)."""


class DataError(UserError):
    """Dataset files missing, unreadable or malformed (stl_tune/data/ raises it)."""
