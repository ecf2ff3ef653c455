"""The sub-commands of `tunelab`: one module each (`add_arguments(parser)`, `run(args)`), on top of the Python API."""
