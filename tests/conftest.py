import os

os.environ.setdefault("GLOG_v", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def mindspore_cpu_context():
    """Every test runs in the same device set-up the CLIs use (graph mode, synchronous CPU dispatch)."""
    from library import device

    device.setup()
    yield
