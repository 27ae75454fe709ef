"""Entry point ``register``: see :mod:`llmflow.register`."""

from llmflow.cli import StepParser, run_step
from llmflow.register import register


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("register", "Register a logged model once, tag its lineage and alias it 'challenger'.")
    parser.add("model_uri", str, "Logged model URI (models:/m-<id>) written by log_pyfunc or log_transformers.")
    parser.add("registered_model_name", str, "Name of the registered model in the Model Registry.")
    run_step(register, parser, argv)


if __name__ == "__main__":
    main()
