"""`python -m odyssey_gevent CONFIG`: the same as the `odyssey` console script."""
from odyssey_gevent.cli import main

if __name__ == "__main__":
    main()
