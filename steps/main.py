"""Entry point ``main``: see :mod:`llmflow.main`."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.main import run_chain
from steps.evaluate import add_evaluation_options


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("main", "Run the whole pipeline: download, export, log, register, evaluate, promote.")
    parser.add("model", str, "Hub repo id (e.g. microsoft/Phi-3-mini-4k-instruct) or a local save_pretrained folder.")
    parser.add("revision", str, "Branch, tag or commit sha on the Hub; ignored for a local folder.")
    parser.add("precision", str, "ONNX precision: int4, int8, fp16 (cuda only) or fp32.")
    parser.add("execution_provider", str, "ONNX execution provider: cpu or cuda.")
    parser.add("int4_block_size", whole_number, "Block size of int4 weight quantization: 16, 32, 64, 128 or 256.")
    parser.add("int4_accuracy_level", whole_number, "int4 MatMul accuracy level: 0 (default) to 4 (int8 activations).")
    parser.add("registered_model_name", str, "Base registered model name; '-onnx' and '-transformers' are appended.")
    parser.add("max_new_tokens", whole_number, "Default number of new tokens per answer for both logged models.")
    add_evaluation_options(parser)
    parser.add("rerun_from", str, "Run this step again even if an equal run finished: none, all, or a step name.")
    run_step(run_chain, parser, argv)


if __name__ == "__main__":
    main()
