"""Entry point ``log_transformers``: see :mod:`llmflow.log_transformers`."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.log_transformers import log_transformers


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("log_transformers", "Log the downloaded model as an llm/v1/chat transformers pipeline.")
    parser.add("download_run_id", str, "Run id of a finished download step.")
    parser.add("max_new_tokens", whole_number, "Default number of new tokens per answer (model_config).")
    run_step(log_transformers, parser, argv)


if __name__ == "__main__":
    main()
