"""The Beam side of the flag declarations: ``HeadwaterOptions``, a ``PipelineOptions`` class.

Imported only by what runs or builds a pipeline (the pipeline modules): the declarations
themselves (:mod:`headwater.pipelines.options`) and the list of pipelines
(:mod:`headwater.pipelines.catalog`) are plain data that the command line reads without Beam.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from headwater.pipelines.options import FLAGS, RUN_FLAGS, Flag

__all__ = ["HeadwaterOptions"]


def _register_flags(cls: type[HeadwaterOptions], parser: argparse.ArgumentParser) -> None:
    for name in cls.FLAG_NAMES:
        FLAGS[name].add_to(parser)


class HeadwaterOptions(PipelineOptions):
    """Base of every pipeline's options: registers the flags named in ``FLAG_NAMES``.

    Beam parses an options view with the ``_add_argparse_args`` found in each class's own
    ``__dict__`` along the MRO, and collects "all options" from the direct subclasses of
    ``PipelineOptions``: so this base registers every headwater flag (Beam then knows them all,
    and passes them on to workers and templates), and each subclass gets its own registration of
    just its flags.
    """

    FLAG_NAMES: tuple[str, ...] = tuple(FLAGS)
    REQUIRED: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Every pipeline takes the flags of every run.
        cls.FLAG_NAMES = (*cls.FLAG_NAMES, *(f for f in RUN_FLAGS if f not in cls.FLAG_NAMES))
        if "_add_argparse_args" not in cls.__dict__:
            cls._add_argparse_args = classmethod(_register_flags)  # type: ignore[assignment]

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _register_flags(cls, parser)

    @classmethod
    def flags(cls) -> list[Flag]:
        """The flags of this pipeline, with ``required`` as this pipeline needs it."""
        return [
            dataclasses.replace(FLAGS[n], required=FLAGS[n].required or n in cls.REQUIRED)
            for n in cls.FLAG_NAMES
        ]
