"""python -m privfedtalk.benchmark: the benchmark's command line (also how --jobs starts its workers)."""

from privfedtalk.benchmark.cli import main

if __name__ == "__main__":
    main()
