"""``[core] hostname_callable`` for components that share one machine but must look like two hosts.

Airflow records the hostname in each triggerer's Job row; with two triggerers on 127.0.0.1 both rows
would say the same, so the deployment tests give each instance its label as hostname, and can then
tell which triggerer holds which trigger (``trigger.triggerer_id`` -> ``job.hostname``).
"""

from __future__ import annotations

import os

FAKE_HOSTNAME_ENV = "FAL_E2E_HOSTNAME"


def component_hostname() -> str:
    return os.environ.get(FAKE_HOSTNAME_ENV) or "localhost"
