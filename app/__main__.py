import sys

from ffclip.app.cli import main

sys.exit(main())
