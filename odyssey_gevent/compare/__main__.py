"""python -m odyssey_gevent.compare: the odyssey-compare command."""
import sys

from odyssey_gevent.compare.runner import main

sys.exit(main())
