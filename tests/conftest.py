"""cpbuild's own tests use the fixture it ships for projects and plugins (``cpbuild.testing``)."""

pytest_plugins = ["cpbuild.testing"]
