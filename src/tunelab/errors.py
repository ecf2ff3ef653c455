"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class TunelabError(Exception):
    """A problem with the user's input or files; its message is shown as is."""
