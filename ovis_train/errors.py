"""The one error type a user can fix by changing the configuration, the command line or what is
installed. It lives at the bottom of the package so that model/ and data/ can raise it where they
find the problem; the entry point prints it as one line and exits with 2, while any other exception
(a library's ValueError included) is a bug or an environment failure and keeps its traceback."""


class ConfigError(ValueError):
    """A configuration problem; the entry point prints its message as one line and exits with 2.

    Messages name the problem and the fix, e.g. "freeze rule #3 'vit.blocks.-9': ...; use ...".
    """
