"""Entry point `rollback`: see llmflow.rollback."""

from llmflow.cli import StepParser, run_step
from llmflow.rollback import rollback


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("rollback", "Move 'champion' back to the version it replaced (alias 'previous').")
    parser.add("registered_model_name", str, "Registered model whose champion is rolled back.")
    run_step(rollback, parser, argv)


if __name__ == "__main__":
    main()
