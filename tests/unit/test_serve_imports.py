"""What ``tollgate serve`` imports: a module imported once stays resident for the process's life."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Resident cost of each, measured in the serving process with the bench's full policy.
NOT_FOR_SERVING = {
    "alembic": "migrations run in a child process (with mako and pygments: ~8 MB)",
    "mako": "Alembic's templates, for `alembic revision` only",
    "pygments": "pulled in by mako",
    "aiohttp": "`tollgate bench`'s load generator only (~8 MB)",
    "litellm": "a `type: litellm` provider only (~190 MB)",
}

_CHECK = textwrap.dedent(
    """
    import sys
    import gateway.cli, gateway.app  # all `tollgate serve` imports before serving
    print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
    """
)


def test_serving_leaves_out_what_other_commands_use() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(result.stdout.split())
    assert {"fastapi", "sqlalchemy", "tiktoken"} <= loaded  # the check sees real imports
    leaked = {name: why for name, why in NOT_FOR_SERVING.items() if name in loaded}
    assert not leaked, leaked
