"""What the Flex Template launcher (``main.py`` at the repository root) runs inside the image.

Input: the argv the Dataflow launcher passes to ``main.py`` -- one ``--NAME=VALUE`` per template
parameter, plus the pipeline options Dataflow adds (``--project``, ``--region``,
``--temp_location``, ``--job_name`` ...). Output: the argv for ``headwater.pipelines.load(name)
.run(argv)``:

* a repeated flag's template value (a JSON list, see :mod:`headwater.templates.metadata`) is
  expanded back into one ``--FLAG=ITEM`` per item;
* ``--runner=DataflowRunner`` is added when no runner is given (headwater otherwise picks a
  local runner);
* ``--setup_file`` (from ``HEADWATER_SETUP_FILE``, baked into the image) is added unless the
  launch already names a ``--setup_file`` or an ``--sdk_container_image``: Beam builds the
  package's sdist in the launcher without pip (``python -m build --no-isolation``) and the
  workers install it;
* ``--streaming`` is added for an unbounded Kafka read (``--source=kafka`` without
  ``--stop_at_end``/``--max_records``) when it is not there already.

Nothing is pip-installed at launch: the image pre-installs headwater and its dependencies.

>>> pipeline_argv("stream_etl", ['--kafka_config=["a=1","b=2"]', "--runner=DataflowRunner"])
['--kafka_config=a=1', '--kafka_config=b=2', '--runner=DataflowRunner']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from headwater.templates.metadata import decode_repeated, is_unbounded_launch, template_flags

__all__ = ["PIPELINE_ENV", "SETUP_FILE_ENV", "pipeline_argv", "pipeline_name"]

#: Environment variable naming the pipeline a template image runs (set in its Dockerfile).
PIPELINE_ENV = "HEADWATER_PIPELINE"
#: Environment variable with the setup.py the launcher stages for the workers.
SETUP_FILE_ENV = "HEADWATER_SETUP_FILE"


def pipeline_name(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """The pipeline to run and the remaining argv.

    ``--headwater_pipeline=NAME`` in argv wins over the ``HEADWATER_PIPELINE`` variable;
    ``ValueError`` when neither is set.
    """
    rest: list[str] = []
    name = environ.get(PIPELINE_ENV, "")
    for arg in argv:
        if arg.startswith("--headwater_pipeline="):
            name = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if not name:
        raise ValueError(f"no pipeline: set {PIPELINE_ENV} or pass --headwater_pipeline=NAME")
    return name, rest


def _split(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``[(option, value-or-None)]`` with ``--k v`` joined into one pair."""
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            pairs.append((key, value))
        elif (
            arg.startswith("--") and index + 1 < len(argv) and not argv[index + 1].startswith("--")
        ):
            pairs.append((arg, argv[index + 1]))
            index += 1
        else:
            pairs.append((arg, None))
        index += 1
    return pairs


def pipeline_argv(
    name: str, argv: Sequence[str], *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The argv for pipeline ``name``'s ``run`` from the launcher's argv (see module doc)."""
    environ = environ or {}
    repeated = {f"--{f.name}" for f in template_flags(name) if f.repeated}
    out: list[str] = []
    values: dict[str, str] = {}
    for key, value in _split(argv):
        if value is None:
            out.append(key)
            continue
        if key in repeated:
            out.extend(f"{key}={item}" for item in decode_repeated(value, name=key[2:]))
            continue
        values[key[2:]] = value
        out.append(f"{key}={value}")
    given = {key for key, _ in _split(out)}
    if "--runner" not in given:
        out.append("--runner=DataflowRunner")
    setup_file = environ.get(SETUP_FILE_ENV)
    if setup_file and not given & {"--setup_file", "--sdk_container_image"}:
        out.append(f"--setup_file={setup_file}")
    if "--streaming" not in given and is_unbounded_launch(name, values):
        out.append("--streaming")
    return out
