"""Drive the real Pulumi engine over the real program, one operation per process.

No Python language host can be built here, so the program runs as an Automation API inline
program: the SDK serves it to the real CLI (`--client` mode), which runs the real engine and
the real kubernetes provider plugin. The workspace is a project folder, so Pulumi.yaml and
`stackConfigDir` apply exactly as for `pulumi up`; only Pulumi.yaml's runtime options (which
virtualenv starts the program) play no part.

    python -m tests.realengine.driver --work-dir DIR --stack dev up
    python -m tests.realengine.driver --work-dir DIR --stack dev preview --expect-no-changes

Runs in its own process so that the engine's runtime state never mixes with the mock runtime
that other tests use. Exit 0 on success, 1 when the operation failed (the engine's message on
stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

from pulumi import automation as auto

PROJECT = "celery-redis"


def _program(work_dir: Path) -> auto.PulumiFn:
    def run() -> None:
        runpy.run_path(str(work_dir / "__main__.py"), run_name="__main__")

    return run


def _stack(work_dir: Path, stack: str) -> auto.Stack:
    return auto.create_or_select_stack(
        stack_name=stack,
        project_name=PROJECT,
        program=_program(work_dir),
        opts=auto.LocalWorkspaceOptions(work_dir=str(work_dir), secrets_provider="passphrase"),
    )


def _echo(line: str) -> None:
    print(line, end="" if line.endswith("\n") else "\n", flush=True)


def main(argv: list[str]) -> int:
    """Run one engine operation and map its outcome to an exit code."""
    parser = argparse.ArgumentParser(prog="driver")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--stack", required=True)
    parser.add_argument("operation", choices=["up", "preview", "refresh", "destroy", "outputs"])
    parser.add_argument("--expect-no-changes", action="store_true")
    parser.add_argument("--refresh", action="store_true")
    args = parser.parse_args(argv)
    work_dir = args.work_dir.resolve()
    os.chdir(work_dir)
    sys.path.insert(0, str(work_dir))
    stack = _stack(work_dir, args.stack)
    try:
        if args.operation == "up":
            stack.up(on_output=_echo, color="never", refresh=args.refresh)
        elif args.operation == "preview":
            stack.preview(
                on_output=_echo,
                color="never",
                expect_no_changes=args.expect_no_changes,
                refresh=args.refresh,
            )
        elif args.operation == "refresh":
            stack.refresh(on_output=_echo, color="never")
        elif args.operation == "destroy":
            stack.destroy(on_output=_echo, color="never")
        else:
            outputs = stack.outputs()
            shown = {k: {"value": v.value, "secret": v.secret} for k, v in outputs.items()}
            print(json.dumps(shown))
    except auto.CommandError as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
