"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from _data_files import make_image_tree


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """``root/{train,val}/{cat,dog}/`` with 3 + 2 train and 1 + 1 val images (mixed JPEG/PNG)."""
    return make_image_tree(tmp_path)
