import sys

from inbox_daemon.cli import main

sys.exit(main())
