"""Keep what the server holds in memory inside its process.

The server's environment holds MASTER_KEY, and its memory the keyring and every key it
uses in place. Two ways take them out without any bug in Keyturn: a core dump (a crash,
``gcore``, a stray SIGSEGV writes the whole memory wherever the host's core pattern
sends it, often to a crash collector), and another process of the same user (a
compromised sidecar, a debugger left on the host) reading /proc/<pid>/environ or
/proc/<pid>/mem, or attaching with ptrace. So every serving process sets its core size
limit to zero and marks itself not dumpable (``prctl(PR_SET_DUMPABLE, 0)``, as ssh-agent
and gpg-agent do): no core file is written, and only a process with CAP_SYS_PTRACE (root)
may read its memory or environment. A profiler run as root (py-spy) still attaches.

``KEYTURN_ALLOW_CORE_DUMPS=1`` leaves both as they were, to debug a crash.

The master key is also withheld from the environment once it has been read
(:func:`withhold_secrets`): the processes the server starts (the RSA generation pool,
multiprocessing's resource tracker) inherit its environment, and are not all hardened.
The supervisor of ``--workers`` hands the key to its workers itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("keyturn.app")
PR_SET_DUMPABLE = 4
#: Read once at start (settings.py); no process the server starts inherits them.
SECRET_VARIABLES = ("MASTER_KEY", "NEW_MASTER_KEY")


def harden(env: Mapping[str, str] = os.environ) -> bool:
    """Apply both to this process; False when the environment says not to."""
    if env.get("KEYTURN_ALLOW_CORE_DUMPS") == "1":
        log.warning(
            "KEYTURN_ALLOW_CORE_DUMPS=1: a crash may write the master key to a core file, "
            "and processes of this user may read this one's memory",
            extra={"category": "security"},
        )
        return False
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(errno)}")
    return True


def withhold_secrets(env: MutableMapping[str, str] = os.environ) -> None:
    """Remove the master key from the environment children inherit (this process's own
    initial environment, /proc/<pid>/environ, is what not being dumpable protects)."""
    for name in SECRET_VARIABLES:
        env.pop(name, None)
