"""TaskFlow decorators of the fal provider (registered under ``task-decorators`` in the provider info)."""
