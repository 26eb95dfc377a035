"""Imports ``fractions`` for warm_activities, out of the supervisor's sight."""

import fractions  # noqa: F401
