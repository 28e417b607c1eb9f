"""`python -m dynadapter ...`: the same front door as the `dynadapter` console script."""

from dynadapter.cli import main

if __name__ == "__main__":
    main()
