"""Entry point `reproduce`: see llmflow.reproduce."""

from llmflow.cli import StepParser, run_step
from llmflow.reproduce import reproduce


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("reproduce", "Rebuild a registered version from its lineage and compare it file by file.")
    parser.add("model_uri", str, "A registered version: models:/<name>/<version> (or models:/<name>@<alias>).")
    run_step(reproduce, parser, argv)


if __name__ == "__main__":
    main()
