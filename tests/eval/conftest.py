"""Eval tests run single-threaded (see ``common.one_thread``)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
