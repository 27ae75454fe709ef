"""Paging out the weight files the export has read: what the maps show, what leaves RSS, and that nothing is lost."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from llmflow.export import nbits, residency
from llmflow.export_onnx import ExportSettings, run_builder

MIB = 1 << 20


def rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_mapped_ranges_finds_the_folders_weight_files_links_followed(tmp_path: Path):
    """A Hugging Face cache snapshot links model.safetensors to blobs/<sha256>: the maps name the blob."""
    folder = tmp_path / "snapshot"
    (folder / "sub").mkdir(parents=True)
    blob = tmp_path / "blobs" / "0f3a"
    blob.parent.mkdir()
    blob.write_bytes(b"w")
    (folder / "model-00001-of-00002.safetensors").symlink_to(blob)
    (folder / "sub" / "model-00002-of-00002.safetensors").write_bytes(b"w")
    (folder / "tokenizer.json").write_text("{}")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"w")
    second = (folder / "sub" / "model-00002-of-00002.safetensors").resolve()
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000100000 rw-p 00000000 fe:00 1   {blob.resolve()}\n"
        f"7f0000200000-7f0000201000 r--p 00000000 fe:00 2   {(folder / 'tokenizer.json').resolve()}\n"
        f"7f0000300000-7f0000400000 r--p 00000000 fe:00 3   {other.resolve()}\n"
        f"7f0000500000-7f0000700000 r--p 00000000 fe:00 4   {second}\n"
        "7f0000800000-7f0000900000 rw-p 00000000 00:00 0 \n"
    )
    assert residency.mapped_ranges(folder, maps) == [(0x7F0000000000, 0x100000), (0x7F0000500000, 0x200000)]


@pytest.mark.parametrize("linked", [False, True], ids=["folder", "hf-cache-snapshot"])
def test_page_out_takes_a_files_pages_out_of_rss_and_loses_nothing(tmp_path: Path, linked: bool):
    """A private writable mapping, as safetensors makes: clean pages leave RSS, a written page keeps its write."""
    size = 64 * MIB
    folder = tmp_path / "snapshot"
    folder.mkdir()
    weights = folder / "model.safetensors"
    if linked:  # as huggingface_hub lays out its cache: the snapshot's file links to blobs/<sha256>
        (tmp_path / "blobs").mkdir()
        weights.symlink_to(tmp_path / "blobs" / "9e1b")
    weights.write_bytes(bytes(range(256)) * (size // 256))
    with weights.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        assert sum(mapping[i] for i in range(0, size, mmap.PAGESIZE)) == 0  # page-aligned offsets read byte 0
        mapping[size - 1 : size] = b"\x07"  # one copy-on-write page, as a weight written in place would be
        resident = rss_file_bytes()
        advised = residency.page_out(folder)
        released = resident - rss_file_bytes()
        assert advised == size
        assert released > size // 2, f"only {released} bytes left RSS"
        assert mapping[size - 1] == 7 and mapping[size - 2] == 254 and mapping[MIB + 3] == 3
    finally:
        mapping.close()


def test_page_out_with_nothing_mapped_does_nothing(tmp_path: Path):
    assert residency.page_out(tmp_path) == 0


def test_the_export_pages_out_the_mapped_weights_after_each_quantized_weight(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The tiny model's safetensors file is mapped while the builder quantizes (transformers 5 maps, not reads)."""
    calls: list[int] = []
    real = residency.page_out
    monkeypatch.setattr("llmflow.export.builder.page_out", lambda folder: calls.append(real(folder)) or calls[-1])
    quantized: list[str] = []
    real_node = nbits._quantize_node
    monkeypatch.setattr(
        nbits, "_quantize_node", lambda graph, node, *a: quantized.append(node.name) or real_node(graph, node, *a)
    )
    run_builder(tiny_model_dir, tmp_path / "onnx", ExportSettings(precision="int4"))
    assert len(calls) == len(quantized) + 1  # one after each weight, one after the builder is done
    assert calls[0] > 0, "the model's weight file was not mapped while the builder quantized"
    assert calls[-1] == 0, "the builder's weights were still mapped after the export (kept alive past gc)"
