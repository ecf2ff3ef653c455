"""How a tunelab process runs its work: quiet libraries, no hub, and every failure as one line and an exit code.

The command line and the comparison bench's worker processes share it.
"""

from __future__ import annotations

import os
import sys

from tunelab.errors import Interrupted, TunelabError


def quiet_libraries() -> None:
    # Library chatter (missing torchvision, progress of every pipeline call) is noise on a CLI.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # No hub is reachable at run time; fail fast instead of waiting on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_guarded(work, debug: bool = False) -> int:
    """Run `work()`; failures become one line on stderr and an exit code (2 bad input, 130 stopped, 1 a bug)."""
    try:
        code = work()
        return code if isinstance(code, int) else 0  # a command may end with its own documented status
    except Interrupted as error:
        print(f"tunelab: {error}", file=sys.stderr)
        return 130
    except TunelabError as error:
        if debug:
            raise
        print(f"tunelab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunelab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`tunelab lora info F | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:  # an unexpected failure still gets one line; --debug shows where
        if debug:
            raise
        print(f"tunelab: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
