"""Import name Airflow derives from the distribution name ``airflow-provider-fal``.

With ``[core] load_examples = True`` (Airflow's default) every Airflow 3.3 component looks for an
``example_dags`` folder next to each installed provider, importing the module named after the
distribution with dashes turned into underscores. The provider's code lives in ``fal_provider``;
this package exists so that import succeeds (no ERROR traceback at start-up) and so the built
wheel can carry the example DAGs (copied from ``dags/`` into ``airflow_provider_fal/example_dags``
at build time), which then show up as the ``airflow-provider-fal-example-dags`` bundle.
"""

from __future__ import annotations

from pathlib import Path

from fal_provider import __version__, get_provider_info

__all__ = ["EXAMPLE_DAGS_FOLDER", "__version__", "get_provider_info"]

#: The example DAGs shipped in the wheel (absent in a source checkout: they are ``dags/`` there).
EXAMPLE_DAGS_FOLDER = Path(__file__).with_name("example_dags")
