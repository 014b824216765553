"""notebooks/first_pytorch_classifier.ipynb runs top to bottom, as a user runs it, on synthetic data
with small step caps; its outputs are checked for what the tutorial shows and what the sweep adds."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = ROOT / "notebooks" / "first_pytorch_classifier.ipynb"


def _with_parameters(nb, **values):
    """Papermill's convention: a cell after the one tagged `parameters` overrides its values."""
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        parts.append(out.get("data", {}).get("text/markdown", ""))
    return "".join(parts)


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_runs_top_to_bottom_on_synthetic_data(tmp_path: Path):
    nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), DATA_DIR=str(tmp_path / "data"), DOWNLOAD=False,
                          EPOCHS=1, MAX_STEPS=200, SWEEP_BATCH_SIZES=[4, 64], SWEEP_SECONDS=0.5, SWEEP_EVAL_IMAGES=500,
                          OUT=str(tmp_path / "sweep"))
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"notebook executed in {time.monotonic() - started:.0f} s")  # shown with -s; a figure, not a test
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "Data: synthetic" in text and "WARNING:" in text  # it says which data it used
    assert "Accuracy of the network on the 10,000 test images:" in text
    assert text.count("Accuracy for class:") == 10
    assert "Finished Training" in text
    assert "Only cpu was measured" in text or "GPU" in text  # the verdict, rendered
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the training images, then two of the report's charts
    assert (tmp_path / "sweep" / "report.html").is_file()
    results = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert {r["eval_images"] for r in results} == {500}  # SWEEP_EVAL_IMAGES reached the sweep
