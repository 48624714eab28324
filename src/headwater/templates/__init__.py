"""Dataflow Flex Templates and jobs for the ready-made pipelines.

* :mod:`~headwater.templates.metadata` -- ``metadata.json`` generated from a pipeline's flags,
  and the local check of launch parameters against it;
* :mod:`~headwater.templates.build` -- the template folder (metadata, Dockerfile, container
  spec, README with the gcloud command);
* :mod:`~headwater.templates.launch` -- scheduler-safe launches (no duplicate jobs, waiting for
  RUNNING/DONE, failures as exceptions) and the Airflow operator ``body``;
* :mod:`~headwater.templates.jobs` -- list, show, cancel, drain;
* :mod:`~headwater.templates.launcher` -- what ``main.py`` runs inside the template image;
* :mod:`~headwater.templates.commands` -- the ``headwater template`` / ``headwater jobs`` CLI.

Submodules are imported on use: importing the package does not load the Google clients.
"""

__all__ = ["build", "commands", "jobs", "launch", "launcher", "metadata"]
