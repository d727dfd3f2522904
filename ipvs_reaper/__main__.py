import sys

from ipvs_reaper.cli import main

sys.exit(main())
