import gzip
import http.server
import pickle
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cifar_archive import make_archive, make_batch, md5_of
from conftest import ROOT, committed
from mlflow.tracking import MlflowClient
from torchvision import transforms

from pipeline import data


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_fetch_from_local_path_and_file_url(tiny_archive, tmp_path):
    src, md5 = tiny_archive
    for i, url in enumerate([str(src), src.as_uri()]):
        dest = tmp_path / f"d{i}" / "a.tar.gz"
        assert data.fetch(url, dest, md5) == dest
        assert md5_of(dest) == md5
        assert leftovers(dest.parent) == ["a.tar.gz"]


def test_archive_with_right_md5_is_not_fetched_again(tiny_archive, tmp_path):
    src, md5 = tiny_archive
    dest = tmp_path / "d" / "a.tar.gz"
    data.fetch(str(src), dest, md5)
    src.unlink()  # the source is gone: only a fetch that skips the download can succeed
    data.fetch(str(src), dest, md5)
    assert md5_of(dest) == md5


def test_md5_mismatch_names_both_digests_and_removes_the_copy(tiny_archive, tmp_path):
    src, md5 = tiny_archive
    dest = tmp_path / "d" / "a.tar.gz"
    wrong = "0" * 32
    with pytest.raises(data.DataError) as e:
        data.fetch(str(src), dest, wrong)
    message = str(e.value)
    assert wrong in message and md5 in message and "\n" not in message
    assert leftovers(dest.parent) == []
    assert src.exists()  # the user's mirror is never touched


def test_truncated_copy_fails_the_md5_check(tiny_archive, tmp_path):
    src, md5 = tiny_archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"MD5 mismatch.*truncated"):
        data.fetch(str(truncated), tmp_path / "d" / "a.tar.gz", md5)


def test_truncated_archive_whose_md5_was_vouched_for_is_reported_corrupt(tiny_archive, tmp_path):
    src, _ = tiny_archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.read_archive(truncated)


def test_not_a_gzip_at_all_is_reported_corrupt(tmp_path):
    page = tmp_path / "error.html"
    page.write_text("<html>404 Not Found</html>")
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.read_archive(page)


def test_missing_batch_is_named(tmp_path):
    path = tmp_path / "a.tar.gz"
    make_archive(path, members={"data_batch_3": None})
    with pytest.raises(data.DataError, match="no cifar-10-batches-py/data_batch_3"):
        data.read_archive(path)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not a pickle", "malformed"),
        (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}), "N x 3072"),
        (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}), "one label"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "0..9"),
        (pickle.dumps(print), "refusing to load builtins.print"),
    ],
)
def test_malformed_batch_is_named(tmp_path, payload, problem):
    path = tmp_path / "a.tar.gz"
    make_archive(path, members={"test_batch": payload})
    with pytest.raises(data.DataError, match=problem) as e:
        data.read_archive(path)
    assert "test_batch" in str(e.value)


def test_unreachable_url_suggests_a_local_mirror(tmp_path):
    dest = tmp_path / "d" / "a.tar.gz"
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(data.DataError, match=r"cannot download .*local path") as e:
        data.fetch("http://127.0.0.1:9/cifar-10-python.tar.gz", dest, "0" * 32, timeout=5)
    assert "\n" not in str(e.value)
    assert leftovers(dest.parent) == []


def test_read_archive_keeps_pixels_labels_and_class_names(tmp_path):
    path = tmp_path / "a.tar.gz"
    make_archive(path, per_batch=8, seed=3)
    rng = np.random.default_rng(3)
    expected = [make_batch(8, rng) for _ in range(6)]
    ds = data.read_archive(path)
    assert ds.train.images.shape == (40, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.dtype == torch.int64
    # planar RGB rows: the red plane of image 0 is the first 1024 values of its row
    assert torch.equal(
        ds.train.images[0, 0].flatten(), torch.from_numpy(expected[0][b"data"][0, :1024])
    )
    assert ds.train.labels[:8].tolist() == expected[0][b"labels"]
    assert ds.test.labels.tolist() == expected[5][b"labels"]
    assert ds.classes[0] == "airplane" and len(ds.classes) == 10


def test_saved_file_round_trips_and_is_byte_reproducible(tmp_path):
    path = tmp_path / "a.tar.gz"
    make_archive(path)
    ds = data.read_archive(path)
    data.save(ds, tmp_path / "one.safetensors")
    data.save(ds, tmp_path / "two.safetensors")
    assert md5_of(tmp_path / "one.safetensors") == md5_of(tmp_path / "two.safetensors")
    back = data.load(tmp_path / "one.safetensors")
    assert torch.equal(back.train.images, ds.train.images)
    assert torch.equal(back.test.labels, ds.test.labels)
    assert back.classes == ds.classes
    assert leftovers(tmp_path) == ["a.tar.gz", "one.safetensors", "two.safetensors"]


def test_normalizer_matches_torchvision_transforms():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = transforms.Normalize(mean, std)(images.float() / 255)
    ours = data.Normalizer(mean, std)(images)
    torch.testing.assert_close(ours, reference)


def test_batch_indices_cover_every_image_once_in_a_seeded_order():
    first = data.batch_indices(10, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    again = data.batch_indices(10, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    other = data.batch_indices(10, 4, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(other))


# --- the `download` stage entry point, as DVC runs it ---------------------------------------------


def run_download_stage(
    workdir: Path, url: str, md5: str, file_size_limit: int | None = None, **data_params
) -> subprocess.CompletedProcess:
    """Run the stage as DVC does, in `workdir`, with the project's params but this archive;
    `file_size_limit` caps the size of any file it writes (RLIMIT_FSIZE), as a full disk would."""
    doc = yaml.safe_load(committed("params.yaml"))
    doc["data"].update(url=url, md5=md5, **data_params)
    (workdir / "params.yaml").write_text(yaml.safe_dump(doc))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "pipeline.stages.download"],
        cwd=workdir,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
        },
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit if file_size_limit else None,
    )


def test_download_stage_converts_the_archive(tiny_archive, tmp_path):
    src, md5 = tiny_archive
    done = run_download_stage(tmp_path, src.as_uri(), md5)
    assert done.returncode == 0, done.stderr
    ds = data.load(tmp_path / "data" / "cifar10.safetensors")
    assert len(ds.train.labels) == 200 and len(ds.test.labels) == 40


def test_what_a_killed_download_left_is_removed_by_the_next_run(tiny_archive, tmp_path):
    """SIGKILL leaves atomic writes' temporary files (nothing can clean up at that instant)."""
    src, md5 = tiny_archive
    for stale in ("data/download/.cifar-10-python.tar.gz.k1ll3d.part",
                  "data/.cifar10.safetensors.k1ll3d.part"):  # fmt: skip
        (tmp_path / stale).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stale).write_bytes(b"half an archive")
    done = run_download_stage(tmp_path, str(src), md5)
    assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path / "data") == ["cifar-10-python.tar.gz", "cifar10.safetensors"]


class _Server(http.server.BaseHTTPRequestHandler):
    """/page.html: what a captive portal or a moved site sends; anything else: 404."""

    def do_GET(self):
        if self.path == "/page.html":
            body = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
            self.send_response(200)
        else:
            body = b"<html><body>Not Found</body></html>"
            self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def web() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def silent() -> str:
    """A server that accepts connections (into its backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"http://127.0.0.1:{s.getsockname()[1]}/cifar-10-python.tar.gz"


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("wrong md5", "MD5 mismatch for .*: expected f{32}, got "),
        ("truncated", "MD5 mismatch .*the copy is truncated, corrupt or another file"),
        ("empty file", "MD5 mismatch .*the copy is an empty file"),
        ("html page", "MD5 mismatch .*the server sent an HTML or XML page"),
        ("http 404", r"cannot download http://.*: HTTP 404 Not Found; without network"),
        ("no answer", r"cannot download http://.*: no answer within 1 s \(data\.timeout_s\)"),
        ("missing batch", "has no cifar-10-batches-py/data_batch_3: not a complete CIFAR-10"),
        ("malformed batch", "test_batch is malformed"),
        ("failed write", r"cannot write data/download/cifar-10-python\.tar\.gz: File too large"),
    ],
)
def test_a_download_fault_ends_in_one_line_and_the_next_run_starts_clean(
    tiny_archive, tmp_path, web, silent, fault, message
):
    good, good_md5 = tiny_archive
    bad = tmp_path / "bad" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    url, md5, extra = str(bad), good_md5, {}
    if fault == "wrong md5":
        url, md5 = str(good), "f" * 32
    elif fault == "truncated":
        bad.write_bytes(good.read_bytes()[:1000])
    elif fault == "empty file":
        bad.write_bytes(b"")
    elif fault == "html page":
        url = f"{web}/page.html"
    elif fault == "http 404":
        url = f"{web}/cifar-10-python.tar.gz"
    elif fault == "no answer":
        url, extra = silent, {"timeout_s": 1}
    elif fault == "missing batch":  # an incomplete archive someone vouched for with its own MD5
        md5 = make_archive(bad, members={"data_batch_3": None})
    elif fault == "malformed batch":
        md5 = make_archive(bad, members={"test_batch": b"not a pickle"})
    elif fault == "failed write":  # 3 MB archive, files capped at 2 MB (the MLflow store fits)
        md5 = make_archive(bad, per_batch=160)
        extra = {"file_size_limit": 2 * 1024 * 1024}
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    done = run_download_stage(work, url, md5, **extra)
    assert time.monotonic() - started < 60  # bounded: never a hang
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert leftovers(work / "data") == []  # nothing half-written, not even a verified archive
    runs = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_runs(["1"])
    assert [r.info.status for r in runs if r.info.run_name == "download"] == ["FAILED"]

    again = run_download_stage(work, good.as_uri(), good_md5)
    assert again.returncode == 0, again.stderr
    assert leftovers(work / "data") == ["cifar-10-python.tar.gz", "cifar10.safetensors"]


def test_gzip_with_a_broken_tar_inside_is_reported_corrupt(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(b"\x00garbage" * 200))
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.read_archive(path)
