"""Running `mlpbench` in-process as a test would from a shell: status, stdout, stderr."""

from mlp.cli import main


def run_cli(argv, capsys):
    """Exit status and output, whether the command returned or argparse exited."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err
