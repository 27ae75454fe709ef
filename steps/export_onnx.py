"""Entry point `export_onnx`: see llmflow.export_onnx."""

from llmflow.cli import StepParser, run_step, whole_number
from llmflow.export_onnx import export_onnx


def build_parser() -> StepParser:
    parser = StepParser("export_onnx", "Export a downloaded model to ONNX with the onnxruntime-genai model builder.")
    parser.add("download_run_id", str, "Id of a finished `download` run whose model to export.")
    parser.add("precision", str, "Weight precision: int4, int8, fp16 or fp32.")
    parser.add("execution_provider", str, "Where the model will run: cpu or cuda (fp16 needs cuda).")
    parser.add("int4_block_size", whole_number, "Block size for int4 quantization: 16, 32, 64, 128 or 256.")
    parser.add("int4_accuracy_level", whole_number, "int4 MatMul accuracy level 0-4 (4: int8 compute).")
    return parser


def main(argv: list[str] | None = None) -> None:
    run_step(export_onnx, build_parser(), argv)


if __name__ == "__main__":
    main()
