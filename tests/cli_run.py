"""Run the CLI in-process for tests: ``ok`` (must succeed) and ``fails`` (must fail with one error line)."""

from typer.testing import CliRunner

from activeseg.cli import app

runner = CliRunner()


def ok(args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}\n{res.output}\n{res.exception!r}"
    return res.output


def fails(args) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code != 0, f"{args} should fail\n{res.output}"
    assert "Traceback" not in res.output and "error:" in res.output
    return res.output
