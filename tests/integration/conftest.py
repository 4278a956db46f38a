"""The integration suite's session fixtures (one local Ray cluster, one trained artifact, one Serve
application) live in ``tests/cluster_fixtures.py``, a plugin that ``tests/conftest.py`` registers, so
that ``tests/reliability`` uses the very same session objects."""

import pytest

pytestmark = pytest.mark.integration
