from keyturn_server.cli import main

raise SystemExit(main())
