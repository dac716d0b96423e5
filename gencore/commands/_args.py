"""argparse value types shared by the subcommands (each rejects a bad value with a message saying what was expected;
argparse then names the flag) and the help formatter. No torch here: gencore.cli builds its parsers from this."""
from __future__ import annotations

import argparse
from typing import Callable


def _number(convert: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):  # NaN fails every comparison, so it is rejected too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected.replace(" ", "_")  # argparse's "invalid <name> value" fallback
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
int_at_least_2 = _number(int, lambda v: v >= 2, "an integer >= 2")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: v > 0, "a positive number")
non_negative_float = _number(float, lambda v: v >= 0, "a non-negative number")
ema_decay = _number(float, lambda v: 0 <= v < 1, "a decay in [0, 1) (0: no EMA)")


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,2, got {text!r}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter (descriptions kept as written), except that it adds nothing where the help
    already says its default, or where the default is None or False (a flag, or a value chosen later, which the help
    then states): no "(default: 100, ...) (default: None)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)
