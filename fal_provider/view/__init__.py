"""The "fal" tab on Airflow's task-instance page, served by the provider's API-server plugin.

What it shows comes from two places, both read on the API server so the browser never talks to
fal and never sees the key:

* the metadata database, through the API server's own session: the task instance, its XComs
  (``fal_request`` pushed before waiting, ``fal_cost``, ``return_value``) and its rendered template
  fields (the input arguments, as Airflow's "Rendered Templates" tab shows them, secrets masked);
* fal itself, through :class:`~fal_provider.hooks.fal.FalHook` on the API server: the request's live
  status with fal's logs and queue position (a free, idempotent GET).
"""
