"""``python -m vaegrid`` and the ``vaegrid`` command: Ctrl-C and SIGTERM are handled before
anything else loads (the CLI's imports take a tenth of a second on a busy machine)."""

from vaegrid import signals

signals.early()


def run() -> None:
    from vaegrid.cli import main

    raise SystemExit(main())


if __name__ == "__main__":
    run()
