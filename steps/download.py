"""Entry point ``download``: see :mod:`llmflow.download`; `--help` lists its parameters."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain file, the project root is not on the path
from llmflow.cli import run_step  # noqa: E402
from llmflow.download import download  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run_step(download, argv)


if __name__ == "__main__":
    main()
