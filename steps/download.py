"""Entry point ``download``: see :mod:`llmflow.download`."""

from llmflow.cli import StepParser, run_step
from llmflow.download import download


def main(argv: list[str] | None = None) -> None:
    parser = StepParser("download", "Pin a Hugging Face model to a commit and record it in MLflow.")
    parser.add(
        "model",
        str,
        "Hub repo id (e.g. microsoft/Phi-3-mini-4k-instruct) or a local save_pretrained folder.",
    )
    parser.add("revision", str, "Branch, tag or commit sha on the Hub; ignored for a local folder.")
    run_step(download, parser, argv)


if __name__ == "__main__":
    main()
