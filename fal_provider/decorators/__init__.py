"""TaskFlow decorators (``@task.fal``, ``@task.fal_batch``), registered in the provider info."""
