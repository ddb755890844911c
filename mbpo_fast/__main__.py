"""``python -m mbpo_fast``: ``--cmake-dir`` prints the CMake package directory; anything
else is handed to the ``mbpo-fast`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--cmake-dir"]:
        import mbpo_fast

        try:
            print(mbpo_fast.cmake_dir())
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        from mbpo_fast.cli import main as cli_main
    except ImportError:
        print("usage: python -m mbpo_fast --cmake-dir", file=sys.stderr)
        return 2
    return int(cli_main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
