"""Shared fixtures: the real local services and the tiny test model."""

from tests.model_fixtures import *  # noqa: F403
from tests.service_fixtures import *  # noqa: F403
