"""``python -m xenrs_cli``: the same entry point as the ``xenrs`` console script."""

from xenrs_cli.cli import main

if __name__ == "__main__":
    main()
