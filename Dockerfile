# CPU image: the harness with a CPU build of PyTorch.
#   docker build -t cifar10-bench .
#   docker run --rm --shm-size=1g -v "$PWD/reports:/reports" -v "$PWD/data:/data" cifar10-bench
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BENCH_REPORTS_DIR=/reports

WORKDIR /app
# torch and torchvision from PyTorch's CPU index first, so the project's ranges are already met
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"
COPY pyproject.toml README.md ./
COPY bench ./bench
COPY cnn ./cnn
RUN pip install --no-cache-dir .

VOLUME ["/reports", "/data"]
ENTRYPOINT ["python", "-m", "bench"]
CMD ["run", "--data-dir", "/data"]
