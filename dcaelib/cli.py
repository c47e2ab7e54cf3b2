"""
cli.py: what the scripts share at the command line: the one-line error instead of a traceback, the
progress bar, and the checks of flag values, made before any work starts.
"""

import argparse
import math
import sys

from tqdm import tqdm

import dcae15


def progress(iterable=None, **kwargs):
    """A tqdm bar on stdout. On a terminal it redraws often; redirected to a file (SLURM, nohup) it
    writes at most one update every 30 s, so that a log holds a few progress lines rather than a
    fragment per step."""
    interactive = sys.stdout.isatty()
    interval = 0.1 if interactive else 30.0
    return tqdm(iterable, file=sys.stdout, dynamic_ncols=interactive, mininterval=interval,
                maxinterval=max(10.0, interval), **kwargs)


class StopRun(Exception):
    """A run that cannot go on (it diverged, a checkpoint could not be written): the script ends with
    this one line and a non-zero exit code; the last intact checkpoint stays as it was."""


def parsers(parser):
    """The parser and its subcommands' parsers."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [q for a in subs for q in a.choices.values()]


def command_line(main, parser):
    """Run a script's `main` on its parsed flags. Bad input raises ValueError, FileNotFoundError or
    FileExistsError with a message that says what to do (ImportError: which optional package to
    install), a run that cannot go on StopRun; the user gets that one line, not a traceback."""
    for p in parsers(parser):
        for action in p._actions:  # each flag's range in its --help, from its type
            words = getattr(action.type, "range", None)
            if words and action.help and words not in action.help:
                action.help += f" ({words})"
        # a bad flag value: one line (the usage is one --help away)
        p.error = lambda message, p=p: p.exit(2, f"{p.prog}: error: {message}\n")
    try:
        main(parser.parse_args())
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, StopRun) as err:
        sys.exit(f"{parser.prog}: error: {err}")


def parse_list(text, kind, flag):
    """A flag's comma-separated values ("8,16,64" -> [8, 16, 64]), each converted by `kind` (int or
    float); a value that does not convert is a one-line error naming the flag."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        words = "integers" if kind is int else "numbers"
        raise ValueError(f"{flag} must be comma-separated {words}, got {text!r}") from None


def parse_c_prime_choices(text, latent_channels, flag, default):
    """A flag's c' values ("8,16,64"), sorted, each in [1, c]; `default` when the flag is not given."""
    if text is None:
        return default
    try:
        return dcae15.check_c_prime_choices(parse_list(text, int, flag), latent_channels)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


# --------------------------------------------------------------------------------------------------
# Flag values: argparse types that refuse a value outside the flag's meaning, before any work, in one
# line that names the flag, the value and the range (argparse adds the flag's name).


def _number(kind, low=None, high=None, low_open=False, zero_means=None):
    """An argparse type: `kind` (int or float), finite, and in [low, high], or above low (> low with
    low_open, else >=); `zero_means` documents what 0 does where 0 is allowed."""
    if high is not None:
        words = f"in [{low:g}, {high:g}]"
    elif low is not None:
        words = f"{'>' if low_open else '>='} {low:g}"
    else:
        words = "a finite number"
    if zero_means:
        words += f"; 0 = {zero_means}"

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        inside = math.isfinite(value) and (high is None or value <= high) and (
            low is None or value > low or (value == low and not low_open))
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} is outside its range: {words}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    convert.range = words
    return convert


positive_int = _number(int, 0, low_open=True)
count = _number(int, 0)  # 0 or more
positive = _number(float, 0, low_open=True)
nonnegative = _number(float, 0)
fraction = _number(float, 0, 1)
finite = _number(float)


def betas(text):
    """Adam's (beta1, beta2) as "B1,B2", each in [0, 1)."""
    values = [v for v in text.split(",") if v.strip()]
    try:
        pair = [float(v) for v in values]
    except ValueError:
        pair = []
    if len(pair) != 2 or not all(0 <= v < 1 for v in pair):
        raise argparse.ArgumentTypeError(f"{text} is not two numbers B1,B2 in [0, 1), e.g. 0.9,0.999")
    return pair


betas.range = "B1,B2 in [0, 1)"


def every(zero_means="off"):
    """An interval in steps: a positive int, or 0 for `zero_means`."""
    return _number(int, 0, zero_means=zero_means)
