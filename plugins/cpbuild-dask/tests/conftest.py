"""The plugin's tests use the ``project`` fixture cpbuild ships for plugin authors."""

from cpbuild.testing import project  # noqa: F401 - a fixture
