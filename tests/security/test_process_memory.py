"""Reading the master key out of the running server, with no bug in Keyturn: from a core
dump, or from another process of the same user (a compromised sidecar, a debugging
tool left on the host) through /proc/<pid>/environ, /proc/<pid>/mem or ptrace.

The server's environment holds MASTER_KEY and its memory the keyring and every key it
uses in place. Before, a process of the same user and capabilities read MASTER_KEY from
/proc/<pid>/environ, and a crash wrote the whole memory to a core file wherever the
host's core pattern sends it. Now the server sets its core size limit to zero and marks
itself not dumpable, as ssh-agent and gpg-agent do.

The tests run as root, whose CAP_SYS_PTRACE passes any such check: so the server and the
reader both run without capabilities (setpriv), as a process of an ordinary user would.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import MASTER_KEY, Harness
from tests.process import ServerProcess
from tests.test_tamper import NEW_MASTER_KEY, both_keys_wrap, start_rotation

NO_CAPABILITIES = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]

pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data")
    process.prefix = NO_CAPABILITIES
    process.start_http()
    yield process
    process.terminate()


def read_as_peer(path: str) -> subprocess.CompletedProcess[bytes]:
    """``path`` read by a process of the server's user, without capabilities."""
    return subprocess.run([*NO_CAPABILITIES, "cat", path], capture_output=True, timeout=10)


def became_sleep(pid: int) -> None:
    """Wait until ``pid`` runs sleep. Until then it is still the forked test process or
    setpriv, with every capability, which a reader without any may not read: reading
    it that early failed the control under a loaded CI machine."""
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline, "the bystander never became sleep"
        time.sleep(0.01)


def test_another_process_of_the_same_user_cannot_read_the_servers_memory(
    server: ServerProcess,
) -> None:
    # A process that does not protect itself, run the same way, is read (so the reader
    # can, and a refusal below is the server's doing).
    with subprocess.Popen(
        [*NO_CAPABILITIES, "sleep", "30"], env={"MASTER_KEY": MASTER_KEY}
    ) as bystander:
        try:
            became_sleep(bystander.pid)
            control = read_as_peer(f"/proc/{bystander.pid}/environ")
        finally:
            bystander.kill()
    assert control.returncode == 0 and MASTER_KEY.encode() in control.stdout
    for name in ("environ", "mem"):
        answer = read_as_peer(f"/proc/{server.pid}/{name}")
        assert answer.returncode != 0, name
        assert MASTER_KEY.encode() not in answer.stdout
        assert b"Permission denied" in answer.stderr


def test_the_processes_that_make_rsa_keys_are_closed_too(server: ServerProcess) -> None:
    """RSA generation runs in worker processes (spawned, so they start dumpable again):
    they hold the private keys they make, and they inherited MASTER_KEY before."""
    made = requests.post(
        f"http://127.0.0.1:{server.http_port}/v1/keys",
        json={"type": "signing"},
        headers={"Authorization": f"Bearer {server.token()}"},
        timeout=60,
    )
    assert made.status_code == 200, made.text
    children = [
        int(pid)
        for task in Path(f"/proc/{server.pid}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert children  # the pool's processes, and multiprocessing's resource tracker
    workers = 0
    for child in children:
        answer = read_as_peer(f"/proc/{child}/environ")
        assert MASTER_KEY.encode() not in answer.stdout  # not inherited: withheld
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            workers += 1  # holds the private keys it made: closed like the server
            assert answer.returncode != 0 and b"Permission denied" in answer.stderr
    assert workers


def test_a_crash_writes_no_core_file(server: ServerProcess) -> None:
    limits = Path(f"/proc/{server.pid}/limits").read_text()
    (core,) = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core.split()[4:6] == ["0", "0"], core


async def test_a_command_that_opens_the_data_directory_is_closed_too(server: Harness) -> None:
    """`keyturn master-key rotate` holds MASTER_KEY and NEW_MASTER_KEY, and the keyring,
    for as long as it runs: minutes on a large store. It waits three seconds once the new
    keyring generation is in place (for running servers to reload), which is when it is
    read here."""
    rotation = await start_rotation(server.data_dir, under=NO_CAPABILITIES)
    try:
        await both_keys_wrap(server.data_dir)
        answer = await asyncio.to_thread(read_as_peer, f"/proc/{rotation.pid}/environ")
        assert answer.returncode != 0 and b"Permission denied" in answer.stderr
        assert NEW_MASTER_KEY.encode() not in answer.stdout
    finally:
        _, stderr = await rotation.communicate()
    assert rotation.returncode == 0, stderr
