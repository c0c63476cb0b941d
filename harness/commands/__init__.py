"""The subcommands of `kpbench`, one module each, in the order `kpbench --help` lists them.

Every module defines NAME (the subcommand), HELP (its one line in `kpbench --help`),
add_arguments(parser) and run(args) -> exit status. A user error is raised as
harness.errors.UserError; harness.cli prints it as one line and exits with status 2.
Adding a subcommand: write harness/commands/<name>_cmd.py and add it to COMMANDS.
"""

from harness.commands import (
    clean_cmd,
    cluster_cmd,
    compare_cmd,
    doctor_cmd,
    render_cmd,
    report_cmd,
    restore_cmd,
    run_cmd,
    validate_cmd,
)

COMMANDS = (
    run_cmd,
    validate_cmd,
    render_cmd,
    doctor_cmd,
    clean_cmd,
    report_cmd,
    compare_cmd,
    restore_cmd,
    cluster_cmd,
)
