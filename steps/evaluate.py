"""Entry point `evaluate`: see llmflow.evaluate."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.evaluate import evaluate


def add_evaluation_options(parser: StepParser) -> None:
    """The data and gate options, shared with ``main``, which hands them to evaluate."""
    parser.add("qa_path", str, "JSONL of {question, answer} rows; a relative path may also be from the project root.")
    parser.add("heldout_path", str, "Held-out text for perplexity; a relative path may also be from the project root.")
    parser.add("eval_max_new_tokens", whole_number, "Most tokens generated per question.")
    parser.add("gate_metrics", str, "Comma-separated metrics compared with the champion and the reference.")
    parser.add("min_scores", str, "Absolute floors, e.g. 'contains_answer=0.5,token_f1=0.3'; 'none' for none.")
    parser.add("champion_tolerance", float, "How far (0-1) below the champion a gated metric may fall.")
    parser.add("min_quality_retained", float, "Least share (0-1) of the reference's score kept on each gated metric.")
    parser.add("max_perplexity_ratio", float, "Highest perplexity ratio, challenger / reference (>= 1).")


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("evaluate", "Score the 'challenger' against champion and reference; gate its promotion.")
    parser.add("registered_model_name", str, "Registered model whose 'challenger' alias is evaluated.")
    parser.add(
        "reference_model_uri",
        str,
        "Reference model: 'auto' (transformers model of the same download run), 'none', or a model URI.",
    )
    add_evaluation_options(parser)
    run_step(evaluate, parser, argv)


if __name__ == "__main__":
    main()
