"""python -m odyssey_gevent.compare: the odyssey-compare command."""
import sys

from odyssey_gevent.compare.runner import main

if __name__ == "__main__":
    sys.exit(main())
