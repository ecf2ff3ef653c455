"""tunelab's command line: one table from sub-command to the module that implements it."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

# Sub-command -> (help, module with `add_arguments(parser)` and `run(args)`); modules load only when used.
COMMANDS = {
    "train": ("train a technique (lora, dreambooth, textual_inversion, hypernetwork) on a folder of images", "tunelab.train.command"),
    "generate": ("generate images, with LoRAs, embeddings and hypernetworks", "tunelab.generate.command"),
    "lora": ("LoRA tools: extract, merge, combine, resize, convert, info, precision-report", "tunelab.lora.command"),
    "bench": ("benchmarks: `bench speed` times tunelab's training step beside the reference step", "tunelab.bench.command"),
    "compare": ("run techniques side by side on one model and subject: time, memory, size, cost, quality", "tunelab.compare.command"),
    "demo": ("compare the four techniques on a built-in toyworld subject (no download; minutes on a laptop)", "tunelab.compare.demo"),
    "toyworld": ("toyworld, the built-in world: pretrain its base, write a subject's images, score a base", "tunelab.toyworld.command"),
}


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Flags of a parser and of every sub-command below it (argparse reports leftovers at the top)."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options += _all_options(sub)
    return options


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line with a suggestion, not a usage dump."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            unknown = message.split(":", 1)[1].split()[0]
            close = difflib.get_close_matches(unknown.split("=")[0], set(_all_options(self)), n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tunelab", description="Personalize text-to-image diffusion models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (help_text, module_name) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def quiet_libraries() -> None:
    # Library chatter (missing torchvision, progress of every pipeline call) is noise on a CLI.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # No hub is reachable at run time; fail fast instead of waiting on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_guarded(work, debug: bool = False) -> int:
    """Run `work()`; failures become one line on stderr and an exit code (2 bad input, 130 stopped, 1 a bug)."""
    from tunelab.errors import TunelabError
    from tunelab.train.stopping import TrainingInterrupted

    try:
        work()
        return 0
    except TrainingInterrupted as error:
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
    except Exception as error:  # an unexpected failure still gets one line; --debug shows where
        if debug:
            raise
        print(f"tunelab: internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    args._argv = list(argv) if argv is not None else sys.argv[1:]  # for commands that start copies of themselves
    return run_guarded(lambda: importlib.import_module(args._module).run(args), args.debug)


def entry() -> None:
    """The console script. After the command, objects are frozen out of the garbage collector:
    tearing down torch/transformers' object graph at exit otherwise costs about a second, and
    by then every output file is closed."""
    code = main()
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
