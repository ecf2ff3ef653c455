"""tunelab's command line: one table from sub-command to the module that implements it."""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import logging
import sys

from tunelab.process import quiet_libraries, run_guarded

# Sub-command -> (help, module with `add_arguments(parser)` and `run(args)`); modules load only when used.
COMMANDS = {
    "train": ("train a technique on a folder of images (`tunelab train --help` lists the techniques)", "tunelab.commands.train"),
    "generate": ("generate images, with LoRAs, embeddings and hypernetworks", "tunelab.commands.generate"),
    "lora": ("LoRA tools: extract, merge, combine, resize, convert, info, precision-report", "tunelab.commands.lora"),
    "bench": ("benchmarks: `bench speed` times tunelab's training step beside the reference step", "tunelab.commands.bench"),
    "compare": ("run techniques side by side on one model and subject: time, memory, size, cost, quality", "tunelab.commands.compare"),
    "evaluate": ("DreamBench's CLIP-I, CLIP-T and DINO of generated images against real ones (local CLIP/DINO models)", "tunelab.commands.evaluate"),
    "sweep": ("search training settings (rank, alpha, learning rate, ...): a grid or Optuna, trials in parallel or on Ray; the "
              "quality-vs-size and quality-vs-cost frontier", "tunelab.commands.sweep"),
    "demo": ("compare the four techniques on a built-in toyworld subject (no download; minutes on a laptop)", "tunelab.commands.demo"),
    "ui": ("a local web UI: train, generate, LoRA tools and comparisons in the browser", "tunelab.commands.ui"),
    "toyworld": ("toyworld, the built-in world: pretrain its base, write a subject's images, score a base", "tunelab.commands.toyworld"),
    "hyper": ("pretrain a weight predictor (HyperDreamBooth style) on procedural toyworld subjects", "tunelab.commands.hyper"),
    "personalize": ("a subject's LoRA predicted from one or a few images in one forward pass, optionally refined",
                    "tunelab.commands.personalize"),
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


def chosen_command(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not a flag), if it is one."""
    words = [word for word in argv if not word.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen sub-command's module is imported to add its options (all when None
    is chosen: `tunelab --help` lists every command from the table alone)."""
    parser = OneLineParser(prog="tunelab", description="Personalize text-to-image diffusion models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (help_text, module_name) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name == command:
            # deferred: a command's module (torch, diffusers) loads only when that command runs
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = build_parser(chosen_command(argv)).parse_args(argv)
    args._argv = argv  # for commands that start copies of themselves
    return run_guarded(lambda: importlib.import_module(args._module).run(args), args.debug)


def entry() -> None:
    """The console script. After the command, objects are frozen out of the garbage collector:
    tearing down torch/transformers' object graph at exit otherwise costs about a second, and
    by then every output file is closed."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
