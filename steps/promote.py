"""Entry point ``promote``: see :mod:`llmflow.promote`; `--help` lists its parameters."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain file, the project root is not on the path
from llmflow.cli import run_step  # noqa: E402
from llmflow.promote import promote  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run_step(promote, argv)


if __name__ == "__main__":
    main()
