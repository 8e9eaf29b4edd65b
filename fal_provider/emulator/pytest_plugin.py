"""Pytest fixtures for the fal emulator (filled in with the emulator)."""
