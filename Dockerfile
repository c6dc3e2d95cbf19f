# metalic with a CUDA build of torch: the image of every service in docker-compose.yml.
#   docker build -t metalic .                                   (CUDA 12.8 wheels)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t metalic:cpu .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 METALIC_HOME=/data RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1
WORKDIR /app

# torch first, from the CUDA index, so that the project's own pin finds it installed.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY metalic ./metalic
COPY api ./api
COPY workers ./workers
COPY migrations ./migrations
RUN pip install ".[service]" && mkdir -p /data

EXPOSE 8000 6379
CMD ["metalic", "serve", "--host", "0.0.0.0"]
