"""Rewrite the generated kohya options table of docs/<lang>/differences_from_kohya.md:

    python -m library.config.options_table --markdown en   (or zh)

(A module of its own: `python -m library.config.kohya_options` would run a second copy of a module the
package has already imported.)"""
import argparse

from ..fileio import atomic_write
from .kohya_options import _WORDS, doc_path, our_parsers, render_doc


def main(argv=None):
    parser = argparse.ArgumentParser(description="rewrite the kohya options table of "
                                                 "docs/<lang>/differences_from_kohya.md")
    parser.add_argument("--markdown", choices=sorted(_WORDS), required=True)
    args = parser.parse_args(argv)
    path = doc_path(args.markdown)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render_doc(text, args.markdown, our_parsers()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
