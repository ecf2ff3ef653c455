"""The exceptions the command line turns into a clear message and an exit code."""


class TunelabError(Exception):
    """A problem with the user's input or files; its message is shown as is."""


class Interrupted(TunelabError):
    """The work stopped on request (a signal); its message says how to go on. Exit code 130."""
