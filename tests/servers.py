"""Real servers on loopback for tests: free ports, waiting for an HTTP server, a PostgreSQL cluster."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Return once `url` answers 200; AssertionError if `server` ends or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server of {url} ended with status {server.returncode}"
        with contextlib.suppress(OSError, urllib.error.URLError):
            urllib.request.urlopen(url, timeout=2)
            return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def postgres_bin() -> Path | None:
    """The bin folder of Debian's newest PostgreSQL (package postgresql), None if not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name))  # fmt: skip
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres_cluster(bin_dir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port with an empty database `mlflow`:
    its postgresql:// URI (user postgres, trust authentication on loopback only).

    PostgreSQL refuses to run as root, so as root (CI, containers) the cluster belongs to the
    package's `postgres` user, in a folder outside pytest's root-only temp folders."""
    as_root = os.geteuid() == 0
    data = Path(tempfile.mkdtemp(prefix="pg-cluster-"))
    user = ["/usr/sbin/runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(data, "postgres", "postgres")

    def pg(tool: str, *args: str) -> None:
        subprocess.run([*user, str(bin_dir / tool), *args], check=True, capture_output=True,
                       timeout=120)  # fmt: skip

    port = free_port()
    try:
        pg("initdb", "-D", str(data / "db"), "-U", "postgres", "-A", "trust", "--no-sync")
        pg("pg_ctl", "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start", "-o",
           f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -c fsync=off")  # fmt: skip
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
            yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
        finally:
            pg("pg_ctl", "-D", str(data / "db"), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)
