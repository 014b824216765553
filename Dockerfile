# CPU image: the harness with a CPU build of PyTorch.
#   docker build -t cifar10-bench .
#   docker run --rm --shm-size=1g -v "$PWD/reports:/reports" -v "$PWD/data:/data" cifar10-bench
# JupyterLab with notebooks/first_pytorch_classifier.ipynb (open the URL with the token it prints):
#   docker build --target jupyter -t cifar10-bench:jupyter .
#   docker run --rm -p 8888:8888 --shm-size=1g -v "$PWD/reports:/reports" -v "$PWD/data:/data" cifar10-bench:jupyter
FROM python:3.11-slim AS base

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BENCH_REPORTS_DIR=/reports \
    CIFAR10_DATA_DIR=/data

WORKDIR /app
# torch and torchvision from PyTorch's CPU index first, so the project's ranges are already met
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" "torchvision>=0.19"
COPY pyproject.toml README.md ./
COPY bench ./bench
COPY cnn ./cnn
RUN pip install --no-cache-dir .
COPY notebooks ./notebooks
VOLUME ["/reports", "/data"]

FROM base AS jupyter
RUN pip install --no-cache-dir "./[notebook]"
EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root", "--ServerApp.root_dir=/app/notebooks"]

# the default target, built last: `docker build .` gives the harness
FROM base AS bench
ENTRYPOINT ["python", "-m", "bench"]
CMD ["run", "--data-dir", "/data"]
