"""The template folder written by ``headwater template build``."""

from __future__ import annotations

import json
from pathlib import Path

from headwater.templates.build import BASE_IMAGE, write_template_folder
from headwater.templates.commands import run_command
from headwater.templates.metadata import metadata_for

REPO = Path(__file__).resolve().parents[2]


def test_folder_holds_metadata_dockerfile_spec_and_readme(tmp_path):
    """metadata.json equals metadata_for; the spec carries the image and the same metadata."""
    written = write_template_folder(
        "windowed_metrics", tmp_path, image="eu-docker.pkg.dev/p/r/hw:1"
    )
    assert sorted(p.name for p in written) == [
        "Dockerfile",
        "README.md",
        "container_spec.json",
        "metadata.json",
    ]
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta == metadata_for("windowed_metrics")
    spec = json.loads((tmp_path / "container_spec.json").read_text())
    assert spec == {
        "image": "eu-docker.pkg.dev/p/r/hw:1",
        "sdkInfo": {"language": "PYTHON"},
        "metadata": meta,
    }


def test_dockerfile_preinstalls_and_never_pips_at_launch(tmp_path):
    """The Dockerfile pip-installs at build time and sets only FLEX_TEMPLATE_PYTHON_PY_FILE."""
    write_template_folder("stream_etl", tmp_path)
    lines = (tmp_path / "Dockerfile").read_text().splitlines()
    assert lines[2] == f"FROM {BASE_IMAGE}"
    env = [line for line in lines if line.startswith("ENV ")]
    assert env == [
        "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py",
        "ENV HEADWATER_PIPELINE=stream_etl",
        "ENV HEADWATER_SETUP_FILE=/template/setup.py",
    ]
    assert "RUN pip install --no-cache-dir /template && pip check" in lines


def test_dockerfile_copies_files_that_exist_in_the_repository(tmp_path):
    """Every COPY source exists at the repository root (the build context)."""
    write_template_folder("stream_etl", tmp_path)
    copies = [
        line.split()[1:-1]
        for line in (tmp_path / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    ]
    sources = [source for sources in copies for source in sources]
    assert sources == ["setup.py", "pyproject.toml", "README.md", "src", "main.py"]
    for source in sources:
        assert (REPO / source).exists(), source


def test_output_is_deterministic(tmp_path):
    """Rebuilding writes the same bytes; only the README mentions the folder."""
    first = [p.read_bytes() for p in write_template_folder("kafka_to_kafka", tmp_path / "a")]
    again = [p.read_bytes() for p in write_template_folder("kafka_to_kafka", tmp_path / "a")]
    elsewhere = write_template_folder("kafka_to_kafka", tmp_path / "b")
    assert first == again
    assert [p.read_bytes() for p in elsewhere if p.name != "README.md"] == [
        data for p, data in zip(elsewhere, first, strict=True) if p.name != "README.md"
    ]


def test_build_command_prints_files_and_gcloud_line(tmp_path, capsys):
    """``headwater template build`` writes the folder and prints the exact gcloud command."""
    folder = tmp_path / "tpl"
    argv = [
        "template",
        "build",
        "stream_etl",
        f"--folder={folder}",
        "--image=eu-docker.pkg.dev/p/r/etl:2",
        "--template_spec=gs://b/templates/etl.json",
    ]
    assert run_command(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["gcloud"] == (
        "gcloud dataflow flex-template build gs://b/templates/etl.json"
        " --image=eu-docker.pkg.dev/p/r/etl:2 --sdk-language=PYTHON"
        f" --metadata-file={folder}/metadata.json"
    )
    assert printed["gcloud"] in (folder / "README.md").read_text()
    assert all(Path(f).exists() for f in printed["files"])
