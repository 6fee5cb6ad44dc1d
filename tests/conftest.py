"Shared fixtures: a small phantom root, the ACDC root (skip when absent), and no network."
import os, socket
from pathlib import Path
import pytest
from diffseg_edu.phantoms import write_synthetic

REPO = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Any connection attempt to a non-loopback address fails the test: no test may touch the network."
    real = socket.socket.connect
    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            raise AssertionError(f"a test tried to reach the network: {address}")
        return real(self, address)
    monkeypatch.setattr(socket.socket, "connect", guarded)

@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    "Point the data cache ($DIFFSEG_DATA) at a per-test temporary folder."
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIFFSEG_DATA", str(cache))
    return cache

@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    "A small phantom data set (4 training, 2 val, 1 test patients)."
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), n_train=4, n_val=2, n_test=1, seed=0)

@pytest.fixture(scope="session")
def acdc_root() -> Path:
    "The ACDC benchmark folder ($DIFFSEG_ACDC or ../shared/data/ACDC); the test is skipped when it is absent."
    for cand in (os.environ.get("DIFFSEG_ACDC"), REPO.parent / "shared" / "data" / "ACDC"):
        if cand and (Path(cand) / "train_slices.list").is_file():
            return Path(cand)
    pytest.skip("ACDC data not found (set DIFFSEG_ACDC or place it at ../shared/data/ACDC)")
