import sys

from ffclip.engine.cli import main

sys.exit(main())
