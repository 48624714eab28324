"""Writes ``job-server.jar`` next to ``libs/``: a jar holding only a manifest that runs Beam's Flink
job server with every jar of ``libs/`` on its class path.

Beam's Python ``FlinkRunner`` starts a job server itself with ``java -jar JAR``
(``--flink_job_server_jar=JAR``, with ``--flink_master=[local]`` or a cluster's address);
Maven Central serves no job-server jar here, so ``make tools`` makes this one from the jars it
fetched (``tools/flink/pom.xml``). Standard library only: it runs before the venv exists.

    python3 tools/flink/launcher_jar.py .tools/flink
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

MAIN_CLASS = "org.apache.beam.runners.flink.FlinkJobServerDriver"


def _manifest_line(text: str) -> bytes:
    """A manifest header, folded at 72 bytes (continuation lines start with a space)."""
    data = text.encode("utf-8")
    parts = [data[:72]]
    data = data[72:]
    while data:
        parts.append(b" " + data[:71])
        data = data[71:]
    return b"\r\n".join(parts)


def write_launcher(folder: Path) -> Path:
    """``folder/job-server.jar`` for the jars in ``folder/libs`` (relative paths)."""
    jars = sorted((folder / "libs").glob("*.jar"))
    if not jars:
        raise SystemExit(f"no jars in {folder / 'libs'}: fetch them first (make tools)")
    class_path = " ".join(f"libs/{jar.name}" for jar in jars)
    manifest = b"\r\n".join(
        [
            b"Manifest-Version: 1.0",
            _manifest_line(f"Main-Class: {MAIN_CLASS}"),
            _manifest_line(f"Class-Path: {class_path}"),
            b"",
            b"",
        ]
    )
    target = folder / "job-server.jar"
    with zipfile.ZipFile(target, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: launcher_jar.py FOLDER (the folder holding libs/)")
    print(f"wrote {write_launcher(Path(sys.argv[1]))}")
