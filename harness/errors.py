"""The root of every error that is the user's to fix (bad input, missing privilege, a cluster not as
expected). `kpbench` prints one as `kpbench: error: <message>` on stderr and exits with status 2; any
other exception is a bug and surfaces as a traceback. The message names what is wrong and what to do.
"""


class UserError(Exception):
    """Something the user can fix: printed as one line (plus any log tail it quotes), exit status 2."""
