"""Flex Template launcher: runs the headwater pipeline this image was built for.

The Dataflow launcher starts ``python main.py --PARAM=VALUE ...`` inside the template image
(``FLEX_TEMPLATE_PYTHON_PY_FILE``). The pipeline's name is baked into the image as
``HEADWATER_PIPELINE`` (``headwater template build`` writes the Dockerfile); this file only
expands the template parameters back into the pipeline's flags and calls
``headwater.pipelines.load(name).run(argv)``. It lives outside the package on purpose.
"""

from __future__ import annotations

import logging
import os
import sys

import headwater.pipelines
from headwater.templates.launcher import pipeline_argv, pipeline_name


def main(argv: list[str] | None = None) -> None:
    """Runs the baked-in pipeline with the launcher's arguments."""
    name, rest = pipeline_name(sys.argv[1:] if argv is None else argv, os.environ)
    headwater.pipelines.load(name).run(pipeline_argv(name, rest, environ=os.environ))


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main()
