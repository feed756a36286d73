"""Option value types shared by the ``mimfast`` command (:mod:`mimfast.cli`) and its
``sweep`` subcommand (:mod:`mimfast.cli_sweep`), kept apart so neither imports the other."""

from __future__ import annotations

import argparse
import math


def count(text):
    """A whole-number option that also accepts 1e6 and 10**6."""
    try:
        if "**" in text:
            base, power = (int(v) for v in text.split("**"))
            if power < 0 or (abs(base) > 1 and power * math.log10(abs(base)) > 30):
                raise argparse.ArgumentTypeError(f"{text!r} is out of range (at most 10**30)")
            return base**power
        value = float(text)
        if value.is_integer():
            return int(value)
    except (ValueError, OverflowError):
        pass
    raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")


def number(text):
    """A real-number option."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
