"""Suite-wide setup: an isolated Airflow home, so tests never read or write ``~/airflow``, and the
emulator fixtures, enabled the way a user enables them (the plugin is opt-in).

This runs before any test module imports Airflow, which reads ``AIRFLOW_HOME`` at import time.
"""

from __future__ import annotations

import os
import tempfile

if os.environ.get("FAL_PROVIDER_TEST_KEEP_AIRFLOW_HOME") != "1":
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="fal-provider-tests-airflow-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

pytest_plugins = ["fal_provider.emulator.pytest_plugin"]
