"""OutputStore on a local folder, memory:// and moto's S3: atomic writes, JSON, manifest, errors."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from prefect_runcomfy.engine.inputs.ids import safe_name
from prefect_runcomfy.engine.outputs.scratch import (
    STAGING_PREFIX,
    staging_file,
    sweep_stale_staging,
)
from prefect_runcomfy.engine.outputs.store import TEMP_PREFIX, OutputStore
from prefect_runcomfy.exceptions import InvalidInputError, StorageError

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "prefect_runcomfy"


class PlainMemoryFileSystem(MemoryFileSystem):
    """A filesystem OutputStore knows nothing about: it must take the temp-name-then-mv path."""

    protocol = "plainmem"


fsspec.register_implementation("plainmem", PlainMemoryFileSystem, clobber=True)


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> OutputStore:
    """The same tests on every backend users are likely to pick."""
    if request.param == "local":
        return OutputStore(str(tmp_path / "out"))
    if request.param == "memory":
        return OutputStore(f"memory://store-{uuid.uuid4().hex}/out")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return OutputStore(f"s3://{bucket}/out", server.storage_options)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/b",
        "..",
        ".",
        "a\x00b",
        "x" * 200,
        "x" * 129,
        "",
        "a\\b",
        "line\nbreak",
        ".hidden",
        " padded",
        "trailing.",
        "con",
        "NUL.txt",
        "a*b",
        "a?b",
        "a[1]",
        "c:evil",
        "名前-ü",
        "COM1",
        "lpt9.mp4",
        "lpt0",  # Microsoft reserves COM0 and LPT0 too
        "COM0.json",
        "Aux.tar.gz",
        "a..b",
        "_private",
        "-dash",
        "tab\tinside",
        "manifest",
    ],
)
def test_safe_name_rejects(bad: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        safe_name(bad)
    assert "cannot be used as a file name" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.problems
    assert info.value.problems[0][0] == "id"


@pytest.mark.parametrize(
    "good", ["alice", "row-001", "a.b_c", "x" * 128, "console", "com10", "lpt10", "nul-1", "1"]
)
def test_safe_name_accepts(good: str) -> None:
    assert safe_name(good) == good


def test_safe_name_messages_say_why() -> None:
    with pytest.raises(InvalidInputError, match="path separator"):
        safe_name("../x")
    with pytest.raises(InvalidInputError, match="200 characters long; the limit is 128"):
        safe_name("y" * 200)
    with pytest.raises(InvalidInputError, match="control characters"):
        safe_name("a\x00b")


def test_names_cannot_leave_the_root(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    with pytest.raises(StorageError, match="would leave the output location"):
        store.write_bytes("../escape.txt", b"x")
    with pytest.raises(StorageError):
        store.path("a/../../b")
    assert not (tmp_path / "escape.txt").exists()


# --- URIs and roots ----------------------------------------------------------------------------


def test_local_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = OutputStore("nested/deeper/out")
    assert (tmp_path / "nested/deeper/out").is_dir()
    assert relative.uri("a.mp4") == str(tmp_path / "nested/deeper/out/a.mp4")
    assert relative.uri() == str(tmp_path / "nested/deeper/out")

    file_url = OutputStore(f"file://{tmp_path}/via-url")
    assert (tmp_path / "via-url").is_dir()
    file_url.write_bytes("x.bin", b"123")
    assert (tmp_path / "via-url/x.bin").read_bytes() == b"123"
    assert file_url.uri("x.bin") == str(tmp_path / "via-url/x.bin")


def test_remote_uris(s3_server: Any, s3_bucket: str) -> None:
    s3 = OutputStore(f"s3://{s3_bucket}/runs/7/", s3_server.storage_options)
    assert s3.uri("a.mp4") == f"s3://{s3_bucket}/runs/7/a.mp4"
    assert s3.uri("_ledger/a.json") == f"s3://{s3_bucket}/runs/7/_ledger/a.json"
    mem = OutputStore("memory://uris/out")
    assert mem.uri("a.mp4") == "memory:///uris/out/a.mp4"
    # The URI round-trips: opening it directly finds the same file.
    mem.write_bytes("a.mp4", b"video")
    assert fsspec.open(mem.uri("a.mp4"), "rb").open().read() == b"video"


# --- JSON ----------------------------------------------------------------------------------------


def test_json_round_trip(store: OutputStore) -> None:
    obj = {
        "id": "alice",
        "b": [1, 2.5, None, True],
        "a": {"nested": "ünï 名前"},
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    }
    uri = store.write_json("alice.json", obj)
    assert uri == store.uri("alice.json")
    back = store.read_json("alice.json")
    assert back == {**obj, "when": "2026-01-02 03:04:05+00:00"}
    text = store.read_bytes("alice.json").decode()
    # sorted keys, indent 2: diffs of metadata stay readable
    assert text.startswith('{\n  "a": {')
    assert text.index('"b"') < text.index('"id"') < text.index('"when"')
    assert store.read_json("missing.json") is None
    assert store.exists("alice.json")
    assert not store.exists("missing.json")


def test_read_json_rejects_non_objects(store: OutputStore) -> None:
    store.write_bytes("list.json", b"[1, 2]")
    store.write_bytes("broken.json", b'{"a": ')
    with pytest.raises(StorageError, match="not an object"):
        store.read_json("list.json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.read_json("broken.json")


def test_read_many_json(store: OutputStore) -> None:
    for i in range(5):
        store.write_json(f"_ledger/row-{i}.json", {"i": i})
    names = [f"_ledger/row-{i}.json" for i in range(5)] + ["_ledger/absent.json"]
    got = store.read_many_json(names)
    assert got == {f"_ledger/row-{i}.json": {"i": i} for i in range(5)}
    assert store.read_many_json([]) == {}
    assert store.read_many_json(["_ledger/absent.json"]) == {}


def test_reads_see_files_another_process_wrote_after_a_listing(
    s3_server: Any, s3_bucket: str
) -> None:
    """s3fs answers a read from its cached listing of the file's folder when it has one:
    without `OutputStore._fresh` on every read, a ledger entry another process wrote after
    this run listed `_ledger/` read as absent, and a run paid for a row twice (issue 20)."""
    store = OutputStore(f"s3://{s3_bucket}/out", s3_server.storage_options)
    store.write_json("_ledger/a.json", {"i": 0})
    assert store.list("_ledger/") == ["_ledger/a.json"]  # s3fs now caches `_ledger`'s listing
    # Another process: its own fs instance (no shared cache), writing to the same bucket.
    other = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    other.pipe_file(f"{s3_bucket}/out/_ledger/b.json", b'{"i": 1}')
    assert store.read_json("_ledger/b.json") == {"i": 1}
    assert store.read_many_json(["_ledger/b.json"]) == {"_ledger/b.json": {"i": 1}}
    assert store.exists("_ledger/b.json")
    assert store.list("_ledger/") == ["_ledger/a.json", "_ledger/b.json"]


# --- files ---------------------------------------------------------------------------------------


def test_put_file_size_sha_list_delete(store: OutputStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "render.mp4"
    local.write_bytes(data)
    uri = store.put_file(local, "alice.mp4")
    assert uri == store.uri("alice.mp4")
    assert store.size("alice.mp4") == len(data)
    assert store.sha256("alice.mp4") == hashlib.sha256(data).hexdigest()
    store.write_json("alice.json", {"ok": True})
    store.write_json("_ledger/alice.json", {"state": "stored"})
    assert store.list() == ["_ledger/alice.json", "alice.json", "alice.mp4"]
    assert store.list("_ledger/") == ["_ledger/alice.json"]
    assert store.list("alice.") == ["alice.json", "alice.mp4"]
    assert store.list("nothing/") == []

    # Replacing a file replaces it whole.
    local.write_bytes(b"second version")
    store.put_file(local, "alice.mp4")
    assert store.read_bytes("alice.mp4") == b"second version"

    store.delete("alice.mp4")
    store.delete("alice.mp4")  # deleting twice is fine
    assert not store.exists("alice.mp4")
    with pytest.raises(StorageError):
        store.size("alice.mp4")


def test_put_file_needs_a_file(store: OutputStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a file"):
        store.put_file(tmp_path / "does-not-exist.mp4", "x.mp4")


def test_manifest_round_trip(store: OutputStore) -> None:
    assert store.read_manifest() is None
    df = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "status": ["succeeded", "failed", "outcome_unknown"],
            "request_id": ["r1", None, None],
            "video_uri": [store.uri("a.mp4"), None, None],
            "duration_s": [5.0, None, None],
            "frames": [125, 250, 125],
        }
    )
    uri = store.write_manifest(df)
    assert uri == store.uri("manifest.parquet")
    back = store.read_manifest()
    assert back is not None
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert list(back["id"]) == ["a", "b", "c"]
    assert store.list() == ["manifest.parquet"]
    # Rewriting replaces the whole manifest.
    store.write_manifest(df.iloc[:1])
    assert len(store.read_manifest()) == 1


def test_check_writable(store: OutputStore) -> None:
    store.check_writable()
    assert store.list() == []


def test_other_filesystems_write_via_temp_name_then_move() -> None:
    store = OutputStore(f"plainmem://plain-{uuid.uuid4().hex}/out")
    assert not store.is_local
    assert not store._atomic_put
    store.write_json("a.json", {"a": 1})
    assert store.read_json("a.json") == {"a": 1}
    assert store.list() == ["a.json"]
    assert not [p for p in store.fs.find(store.root) if TEMP_PREFIX in p]


# --- atomicity ---------------------------------------------------------------------------------


def test_readers_never_see_a_partial_local_file(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    versions = [b"A" * (2 * 1024 * 1024), b"B" * (3 * 1024 * 1024)]
    sources = []
    for i, data in enumerate(versions):
        path = tmp_path / f"v{i}.bin"
        path.write_bytes(data)
        sources.append(path)
    store.put_file(sources[0], "video.mp4")
    final = tmp_path / "out" / "video.mp4"
    stop = threading.Event()
    seen: list[int] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.put_file(sources[i % 2], "video.mp4")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            content = final.read_bytes()
            assert content in versions, f"saw a partial file of {len(content)} bytes"
            seen.append(len(content))
    finally:
        stop.set()
        thread.join()
    assert len(set(seen)) == 2, "the writer should have replaced the file while we read"
    assert store.list() == ["video.mp4"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["video.mp4"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.write_bytes("keep.json", b"old")
    # A source that opens but fails on the first read: the kernel refuses reads of this
    # process's memory at offset 0, so the copy breaks after the temp file was created.
    with pytest.raises(StorageError, match="Cannot write"):
        store.put_file("/proc/self/mem", "keep.json")
    assert (tmp_path / "out" / "keep.json").read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_upload_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = tmp_path / "huge.mp4"
    with open(big, "wb") as fh:  # sparse: cheap to create, takes seconds to copy
        fh.truncate(8 * 1024**3)
    script = textwrap.dedent(
        f"""
        import sys, types
        # Import the storage module without the package __init__ (which imports Prefect).
        pkg = types.ModuleType("prefect_runcomfy")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["prefect_runcomfy"] = pkg
        from prefect_runcomfy.engine.outputs.store import OutputStore
        OutputStore({str(out)!r}).put_file({str(big)!r}, "video.mp4")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            temps = [p for p in out.glob(".*")] if out.exists() else []
            if temps and temps[0].stat().st_size > 0:
                break
            assert proc.poll() is None, "the upload ended before it could be interrupted"
            time.sleep(0.01)
        else:
            pytest.fail("no temporary file appeared")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "video.mp4").exists()
    leftovers = list(out.iterdir())
    assert leftovers
    assert all(p.name.startswith(TEMP_PREFIX) for p in leftovers)
    assert OutputStore(str(out)).list() == []  # an unfinished write is never listed
    for p in leftovers:
        p.unlink()
    big.unlink()


def test_storage_modules_do_not_import_prefect() -> None:
    script = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("prefect_runcomfy")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["prefect_runcomfy"] = pkg
        import prefect_runcomfy.engine.outputs.store, prefect_runcomfy.engine.plan.ledger, prefect_runcomfy.engine.inputs.media
        assert not [m for m in sys.modules if m.split(".")[0] == "prefect"], "prefect imported"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_staging_file_is_removed(tmp_path: Path) -> None:
    with staging_file(".mp4") as tmp:
        assert tmp.suffix == ".mp4"
        assert not tmp.exists()
        tmp.write_bytes(b"x")
        folder = tmp.parent
    assert not folder.exists()

    def fail_inside() -> Path:
        with staging_file(".bin") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError(str(tmp.parent))

    with pytest.raises(RuntimeError) as info:
        fail_inside()
    assert not Path(str(info.value)).exists()


# --- errors --------------------------------------------------------------------------------------


def test_missing_bucket_is_a_clear_storage_error_without_secrets(s3_server: Any) -> None:
    options = {
        "key": "AKIAEXAMPLEKEY123",
        "secret": "wJalrXUtnFEMI-very-secret",
        "client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"},
    }
    store = OutputStore("s3://no-such-bucket-4242/out", options)
    for attempt in (
        lambda: store.write_json("a.json", {"a": 1}),
        lambda: store.list(),
        lambda: store.check_writable(),
        lambda: store.write_manifest(pd.DataFrame({"id": ["a"]})),
    ):
        with pytest.raises(StorageError) as info:
            attempt()
        message = str(info.value)
        assert "s3://no-such-bucket-4242/out" in message
        assert "bucket" in message
        assert "credentials" in message
        assert "does not exist" in message
        assert "wJalrXUtnFEMI" not in message
        assert "AKIAEXAMPLEKEY123" not in message
    assert "wJalrXUtnFEMI" not in repr(store)
    assert "AKIAEXAMPLEKEY123" not in repr(store)


def test_secrets_are_scrubbed_from_messages(tmp_path: Path) -> None:
    secret = "hunter2-hunter2"
    # LocalFileSystem keeps unknown options, so a "secret" can ride along like a real one would.
    store = OutputStore(str(tmp_path / "out"), {"secret": secret})
    blocked = tmp_path / "out" / "blocked"
    blocked.write_text("a file where a folder is needed")
    with pytest.raises(StorageError) as info:
        store.write_bytes(f"blocked/{secret}.json", b"{}")
    assert secret not in str(info.value)
    assert "***" in str(info.value)


def test_unwritable_local_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        store = OutputStore(str(locked))
        with pytest.raises(StorageError, match="writable"):
            store.write_bytes("a.json", b"{}")
    finally:
        locked.chmod(0o700)


def test_json_written_is_valid_json_everywhere(store: OutputStore) -> None:
    store.write_json("x.json", {"path": Path("/a/b"), "n": 1})
    assert json.loads(store.read_bytes("x.json")) == {"path": "/a/b", "n": 1}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_staging_left_by_a_killed_process_is_removed_once_stale(tmp_path: Path) -> None:
    """A SIGKILL skips `finally`; the next process removes the folder once nobody touched it
    for a day, and never a folder whose files are still being written."""
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    script = textwrap.dedent(
        f"""
        import sys, time, types
        pkg = types.ModuleType("prefect_runcomfy")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["prefect_runcomfy"] = pkg
        from prefect_runcomfy.engine.outputs.scratch import staging_folder
        with staging_folder() as folder:
            with open(folder + "/partial.mp4", "wb") as fh:
                fh.write(b"x" * 1000)
            print(folder, flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        killed = Path(proc.stdout.readline().strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed.parent == tmp_root and (killed / "partial.mp4").exists()

    two_days_ago = time.time() - 2 * 86400
    os.utime(killed / "partial.mp4", (two_days_ago, two_days_ago))
    os.utime(killed, (two_days_ago, two_days_ago))
    busy = tmp_root / f"{STAGING_PREFIX}busy"  # an old folder with a file written just now
    busy.mkdir()
    (busy / "downloading.mp4").write_bytes(b"y")
    os.utime(busy, (two_days_ago, two_days_ago))
    other = tmp_root / "someone-elses"
    other.mkdir()
    os.utime(other, (two_days_ago, two_days_ago))

    # A new process's first staging folder sweeps (the real path: TMPDIR, first call).
    sweep = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("prefect_runcomfy")
        pkg.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["prefect_runcomfy"] = pkg
        from prefect_runcomfy.engine.outputs.scratch import staging_file
        with staging_file(".mp4") as path:
            path.write_bytes(b"z")
        """
    )
    subprocess.run([sys.executable, "-c", sweep], env=env, check=True, timeout=60)
    assert not killed.exists()
    assert sorted(p.name for p in tmp_root.iterdir()) == [f"{STAGING_PREFIX}busy", "someone-elses"]


def test_sweep_keeps_fresh_folders_and_reports_what_it_removed(tmp_path: Path) -> None:
    old, fresh = tmp_path / f"{STAGING_PREFIX}old", tmp_path / f"{STAGING_PREFIX}fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "f").write_bytes(b"1")
    hour_ago = time.time() - 3600
    for path in (old / "f", old):
        os.utime(path, (hour_ago, hour_ago))
    assert sweep_stale_staging(tmp_path, max_age_s=1800) == [str(old)]
    assert sweep_stale_staging(tmp_path, max_age_s=1800) == []
    assert fresh.exists() and not old.exists()
    assert sweep_stale_staging(tmp_path / "missing") == []


def test_a_file_written_in_place_appears_whole_under_its_name(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    temp = store.local_temp("sub/a.mp4")
    assert os.path.basename(temp).startswith(TEMP_PREFIX)
    assert os.path.dirname(temp) == str(tmp_path / "out" / "sub")
    Path(temp).write_bytes(b"video")
    assert store.list("sub/") == [], "a file being written is not listed"
    assert store.commit_local(temp, "sub/a.mp4") == str(tmp_path / "out" / "sub" / "a.mp4")
    assert store.read_bytes("sub/a.mp4") == b"video" and not os.path.exists(temp)
    again = store.local_temp("sub/a.mp4")
    Path(again).write_bytes(b"poster")
    store.commit_local(again, "sub/a.mp4", durable=False)
    assert store.read_bytes("sub/a.mp4") == b"poster"
    with pytest.raises(StorageError, match="not a local folder"):
        OutputStore("memory://x/out").local_temp("a.mp4")


def test_temp_files_left_by_a_killed_run_are_removed_once_stale(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.write_bytes("a.mp4", b"kept")
    old = store.local_temp("a.mp4")
    fresh = store.local_temp("b.mp4")
    ledger_old = store.local_temp("_ledger/a.json")
    for path in (old, fresh, ledger_old):
        Path(path).write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    os.utime(ledger_old, (hour_ago, hour_ago))
    removed = store.remove_stale_temp_files(max_age_s=600)
    assert sorted(removed) == sorted(
        [os.path.basename(old), os.path.join("_ledger", os.path.basename(ledger_old))]
    )
    assert os.path.exists(fresh), "a download in progress (written to lately) is kept"
    assert store.read_bytes("a.mp4") == b"kept"
    assert OutputStore("memory://x/out").remove_stale_temp_files() == []
