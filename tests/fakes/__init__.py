"""Test doubles shared by more than one tier (unit and integration), so no tier imports another's."""
