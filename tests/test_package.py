import importlib.metadata

import ovis_train


def test_installed_version_matches_package():
    assert importlib.metadata.version("ovis-train") == ovis_train.__version__
