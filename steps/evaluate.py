"""Entry point `evaluate`: see llmflow.evaluate."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.evaluate import evaluate


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("evaluate", "Score the 'challenger' version of a registered model and gate its promotion.")
    parser.add("registered_model_name", str, "Registered model whose 'challenger' alias is evaluated.")
    parser.add("qa_path", str, "JSONL of {question, answer} rows; a relative path may also be from the project root.")
    parser.add("min_exact_match", float, "Lowest exact_match (0 to 1) that may become 'champion'.")
    parser.add("min_contains_answer", float, "Lowest contains_answer (0 to 1) that may become 'champion'.")
    parser.add("eval_max_new_tokens", whole_number, "Most tokens generated per question.")
    run_step(evaluate, parser, argv)


if __name__ == "__main__":
    main()
