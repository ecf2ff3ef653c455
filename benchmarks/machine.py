"""What machine a benchmark ran on: the package's own description, shared by the scripts here."""

from tunelab.machine import cpu_model  # noqa: F401  (re-exported for the scripts beside this file)
