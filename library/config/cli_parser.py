"""The scripts' argument parser: a command-line mistake gets what a config-file mistake gets, one line naming
the option and what it expects (and "did you mean" for a mistyped name), through UserError, instead of
argparse's usage dump (exit code 2 either way)."""
import argparse
import difflib
import re

from ..errors import UserError


class CliParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(self._explain(message))

    def _explain(self, message):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if not unknown:
            return message  # argparse already names the option ("argument --x: invalid choice ...")
        names = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        words = unknown.group(1).split()
        options = [w for w in words if w.startswith("-")]
        if not options:  # values with no option before them (or more than the option takes)
            return f"unexpected value(s) {' '.join(words)}: every value follows the option it belongs to"
        parts = []
        for word in options:  # the values after a mistyped option are its own; naming the option is enough
            close = difflib.get_close_matches(word.split("=", 1)[0], names, n=1, cutoff=0.75)
            parts.append(f"unknown option {word}" + (f"; did you mean {close[0]}?" if close else ""))
        return "; ".join(parts)
