"""Fixtures of the reliability suite: a real tiny ReSFU U-Net trained through ``resfu-med train`` on the demo data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from _reliability import train_argv, write_config


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Bit-identical comparisons need one reduction order: one intra-op thread, in-process and in subprocesses."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("cfg") / "tiny.yaml")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_config) -> Path:
    """An uninterrupted ``resfu-med train`` of :data:`ITERS` iterations (in-process); its ``last.pt`` is the answer
    the kill/resume and determinism tests must reproduce bit for bit."""
    from resfu_med.cli import main

    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_argv(run, tiny_config)) == 0
    return run


@pytest.fixture(scope="session")
def checkpoint(reference_run) -> Path:
    return reference_run / "last.pt"


@pytest.fixture()
def python() -> str:
    return sys.executable
