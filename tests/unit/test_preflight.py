"""What a worker checks before it starts: its port, its data directory, its local state."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from mailstream.runtime.preflight import (
    OFFSET_KEY,
    PortInUse,
    check_port_free,
    lock_data_dir,
    persisted_offsets,
)


def test_a_port_someone_listens_on_is_refused_naming_the_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse) as err:
            check_port_free("127.0.0.1", port, "web.port", "--web-port")
    assert str(err.value).startswith(f"web.port: port {port} on 127.0.0.1 is already in use")
    assert str(err.value).endswith("choose another port (--web-port)")
    check_port_free("127.0.0.1", port, "web.port", "--web-port")  # free again once closed


def test_a_second_process_on_a_data_dir_is_told_who_holds_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys; from pathlib import Path\n"
        "from mailstream.runtime.preflight import lock_data_dir\n"
        "lock_data_dir(Path(sys.argv[1]))\n"
    )
    with lock_data_dir(data):
        run = subprocess.run(
            [sys.executable, "-c", code, str(data)], capture_output=True, text=True
        )
    assert run.returncode != 0
    assert f"another worker (pid {os.getpid()}) is using {data}" in run.stderr
    assert "DataDirLocked" in run.stderr


def test_the_data_dir_is_free_again_once_its_holder_exits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys; from pathlib import Path\n"
        "from mailstream.runtime.preflight import lock_data_dir\n"
        "lock_data_dir(Path(sys.argv[1]))\n"
    )
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True)
        assert run.returncode == 0, run.stderr


def test_persisted_offsets_are_read_from_each_table_partition(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    tables.mkdir(parents=True)
    for name, offset in (("users-0.db", b"14"), ("users-3.db", b"7"), ("timers-1.db", None)):
        db = Rdict(str(tables / name), options=Options(raw_mode=True))
        db[b"some-key"] = b"value"
        if offset is not None:
            db[OFFSET_KEY] = offset
        db.close()
    (tables / "deliveries-backups").mkdir()
    assert persisted_offsets(tmp_path, "ms") == {
        ("ms-users-changelog", 0): 14,
        ("ms-users-changelog", 3): 7,
    }
    assert persisted_offsets(tmp_path / "nothing-yet", "ms") == {}
