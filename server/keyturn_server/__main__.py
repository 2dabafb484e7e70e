import os
import signal

from keyturn_server.process.worker import INDEX

if INDEX in os.environ:
    # A worker of `keyturn serve --workers N`: a SIGHUP meant as a reload (to the process
    # group: a terminal's hangup, a reload sent to every process) must not end it while it
    # imports and starts, before its handler is installed (cli/serve.py).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

from keyturn_server.cli import main

raise SystemExit(main())
