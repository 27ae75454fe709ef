"""Entry point `log_pyfunc`: see llmflow.log_pyfunc."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.log_pyfunc import log_pyfunc


def build_parser() -> StepParser:
    parser = StepParser("log_pyfunc", "Log the ONNX export as an MLflow pyfunc model served by onnxruntime-genai.")
    parser.add("export_run_id", str, "Id of a finished `export_onnx` run whose ONNX folder to log.")
    parser.add("max_new_tokens", whole_number, "Default number of new tokens per answer (a request may override it).")
    return parser


def main(argv: list[str] | None = None) -> None:
    run_step(log_pyfunc, build_parser(), argv)


if __name__ == "__main__":
    main()
