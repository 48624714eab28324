"""``headwater template spec|build|launch`` and ``headwater jobs list|show|cancel|drain``.

Every command prints JSON on stdout (one document) and nothing else there, so schedulers can
parse it. Exit status: 0 on success; 2 with one line on stderr naming a bad parameter or flag
(a ``ValueError``, through ``headwater.cli``); 1 when the launched job FAILED / was CANCELLED
(its summary on stdout, its error on stderr), when waiting timed out, or when the API call
failed.

``--endpoint`` points the clients somewhere else than Google's API: ``insecure://HOST:PORT``
is a plaintext gRPC server without credentials (the tests' local fake), anything else an API
endpoint with TLS.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="headwater")
>>> add_commands(parser.add_subparsers(dest="command"))
>>> parser.parse_args(["template", "spec", "stream_etl"]).pipeline
'stream_etl'
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from headwater import pipelines
from headwater.io.kafka import mask_setting

__all__ = ["add_commands", "run_command"]

_ENDPOINT_HELP = (
    "Dataflow API endpoint instead of Google's: insecure://HOST:PORT for a plaintext local "
    "gRPC server (testing), otherwise HOST[:PORT] with TLS"
)


def _print(data: Any, *, sort: bool = True) -> None:
    print(json.dumps(data, indent=2, sort_keys=sort))


def _pairs(items: Sequence[str] | None, *, what: str, repeatable: frozenset[str]) -> dict:
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--{what} {mask_setting(item)!r} is not KEY=VALUE")
        key = key.strip()
        if key in repeatable:
            values.setdefault(key, []).append(value)
        elif key in values:
            raise ValueError(f"--{what} {key!r} given twice")
        else:
            values[key] = value
    return values


def _cmd_spec(args: argparse.Namespace) -> int:
    from headwater.templates.metadata import metadata_for

    _print(metadata_for(args.pipeline), sort=False)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from headwater.templates.build import gcloud_build_command, write_template_folder

    folder = args.folder or f"build/templates/{args.pipeline}"
    written = write_template_folder(
        args.pipeline, folder, image=args.image, template_spec=args.template_spec_path
    )
    _print(
        {
            "pipeline": args.pipeline,
            "folder": folder,
            "files": [p.as_posix() for p in written],
            "gcloud": gcloud_build_command(
                args.pipeline, folder, image=args.image, template_spec=args.template_spec_path
            ),
        }
    )
    return 0


def _api_failure(exc: Exception) -> int:
    message = getattr(exc, "message", None) or str(exc)
    print(f"headwater: error: {type(exc).__name__}: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _cmd_launch(args: argparse.Namespace) -> int:
    from google.api_core import exceptions

    from headwater.templates.launch import JobFailedError, JobTimeoutError, launch
    from headwater.templates.metadata import template_flags

    repeated = frozenset(f.name for f in template_flags(args.pipeline) if f.repeated)
    params = _pairs(args.param, what="param", repeatable=repeated)
    environment = _pairs(args.env, what="env", repeatable=frozenset())
    try:
        job = launch(
            args.pipeline,
            project=args.project,
            region=args.region,
            template_spec=args.template_spec,
            job_name=args.job_name,
            params=params,
            environment=environment,
            validate_only=args.validate_only,
            update=args.update,
            endpoint=args.endpoint,
            wait=args.wait,
            poll_interval=args.poll_interval,
            timeout=args.timeout,
        )
    except (JobFailedError, JobTimeoutError) as exc:
        _print(exc.job)
        print(f"headwater: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except exceptions.GoogleAPICallError as exc:
        return _api_failure(exc)
    _print(job)
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    from google.api_core import exceptions

    from headwater.templates import jobs

    where = {"project": args.project, "region": args.region, "endpoint": args.endpoint}
    try:
        if args.jobs_command == "list":
            result: Any = jobs.list_jobs(active_only=args.active, name=args.name, **where)
        elif args.jobs_command == "show":
            result = jobs.show_job(args.job_id, **where)
        elif args.jobs_command == "cancel":
            result = jobs.cancel_job(args.job_id, **where)
        else:
            result = jobs.drain_job(args.job_id, **where)
    except exceptions.GoogleAPICallError as exc:
        return _api_failure(exc)
    _print(result)
    return 0


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", required=True, help="Dataflow region, e.g. europe-west1")
    parser.add_argument("--endpoint", default=None, help=_ENDPOINT_HELP)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def add_commands(subparsers: Any) -> None:
    """Registers ``template`` and ``jobs`` (each with its subcommands) on ``subparsers``."""
    names = ", ".join(pipelines.NAMES)
    template = subparsers.add_parser(
        "template",
        help="Flex Templates: print the metadata, write the template folder, launch",
        description="Dataflow Flex Templates generated from a pipeline's flags.",
    )
    template_commands = template.add_subparsers(
        dest="template_command", required=True, metavar="SUBCOMMAND"
    )

    spec = template_commands.add_parser(
        "spec", help="print the pipeline's metadata.json", description="Print metadata.json."
    )
    spec.add_argument("pipeline", choices=pipelines.NAMES, metavar="PIPELINE", help=names)
    spec.set_defaults(func=_cmd_spec)

    build = template_commands.add_parser(
        "build",
        help="write the template folder (metadata.json, Dockerfile, container spec, README)",
        description="Write the Flex Template folder, ready for docker build and "
        "gcloud dataflow flex-template build.",
    )
    build.add_argument("pipeline", choices=pipelines.NAMES, metavar="PIPELINE", help=names)
    build.add_argument("--folder", help="where to write (default build/templates/PIPELINE)")
    build.add_argument("--image", help="image path, e.g. REGION-docker.pkg.dev/PROJECT/REPO/NAME")
    build.add_argument(
        "--template_spec",
        dest="template_spec_path",
        help="gs:// path the template file goes to (fills the README's gcloud command)",
    )
    build.set_defaults(func=_cmd_build)

    launch = template_commands.add_parser(
        "launch",
        help="launch a Flex Template job (parameters checked locally first)",
        description="Launch PIPELINE's Flex Template. Prints the job as JSON. Does not start a "
        "second job while one with the same --job_name is active (unless --update).",
    )
    launch.add_argument("pipeline", choices=pipelines.NAMES, metavar="PIPELINE", help=names)
    launch.add_argument("--template_spec", required=True, help="gs:// path of the template file")
    launch.add_argument("--job_name", required=True, help="Dataflow job name")
    _where(launch)
    launch.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="a template parameter (repeatable; repeat a repeated flag such as kafka_config)",
    )
    launch.add_argument(
        "--env",
        action="append",
        metavar="KEY=VALUE",
        help="runtime environment, e.g. max_workers=5, temp_location=gs://..., "
        "additional_user_labels=team=data (repeatable)",
    )
    launch.add_argument(
        "--validate_only", action="store_true", help="let Dataflow validate, start nothing"
    )
    launch.add_argument(
        "--update", action="store_true", help="update the running job of the same name"
    )
    launch.add_argument(
        "--wait",
        choices=("running", "done"),
        help="wait until the job is RUNNING (streaming) or DONE (batch); never DONE for a "
        "streaming job",
    )
    launch.add_argument(
        "--poll_interval", type=_seconds, default=10.0, help="seconds between polls (10)"
    )
    launch.add_argument(
        "--timeout", type=_seconds, default=1800.0, help="seconds to wait at most (1800)"
    )
    launch.set_defaults(func=_cmd_launch)

    jobs = subparsers.add_parser(
        "jobs",
        help="Dataflow jobs: list, show, cancel, drain",
        description="List, show, cancel or drain Dataflow jobs.",
    )
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    listing = jobs_commands.add_parser("list", help="list the region's jobs")
    _where(listing)
    listing.add_argument("--active", action="store_true", help="active jobs only")
    listing.add_argument("--name", help="only jobs with this name")
    listing.set_defaults(func=_cmd_jobs)
    for verb, text in (
        ("show", "show one job"),
        ("cancel", "cancel a job (in-flight data is dropped)"),
        ("drain", "drain a streaming job (finish in-flight data, then stop)"),
    ):
        command = jobs_commands.add_parser(verb, help=text)
        command.add_argument("job_id", help="Dataflow job id")
        _where(command)
        command.set_defaults(func=_cmd_jobs)


def run_command(argv: Sequence[str]) -> int:
    """Runs one ``template``/``jobs`` command as ``headwater`` would; returns the exit status.

    A ``ValueError`` (bad parameter) is one line on stderr and status 2, as in
    ``headwater.cli``.
    """
    parser = argparse.ArgumentParser(prog="headwater")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"headwater: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
