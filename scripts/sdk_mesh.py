"""Start or stop the mesh that scripts/sdk_matrix.sh tests the SDK against: this checkout's
ingest, two processors and query, on the ports of this test slot (AUDITMESH_TEST_SLOT, see
tests/conftest.py) and a keyspace of their own, emptied at every start.

    python scripts/sdk_mesh.py up RUN_DIR     start it; write RUN_DIR/mesh.env, the
                                              AUDITMESH_SDK_* variables of the SDK's tests
    python scripts/sdk_mesh.py down RUN_DIR   stop it

Run it from the repository root with the project's venv (the server side).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditmesh.config import StoreConfig  # noqa: E402
from auditmesh.mesh import MeshLayout, infra  # noqa: E402
from auditmesh.schema import create_schema, drop_keyspace  # noqa: E402
from auditmesh.supervisor import Supervisor  # noqa: E402
from tests.conftest import TEST_SLOT, slot_port, slot_redis_url  # noqa: E402

KEYSPACE = "auditmesh_sdk" + (f"_{TEST_SLOT}" if TEST_SLOT else "")


def layout() -> MeshLayout:
    return MeshLayout(
        ingest_port=slot_port(27051),
        processor_base_port=slot_port(27061),
        processors=2,
        query_port=slot_port(27071),
        keyspace=KEYSPACE,
        extra_env={"AUDITMESH_TOKEN_KEY": "sdk-matrix", "AUDITMESH_REDIS_URL": slot_redis_url(14)},
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    command, run_dir = argv
    supervisor = Supervisor(Path(run_dir))
    mesh = layout()
    if command == "down":
        mesh.stop(supervisor)
        return 0
    infra("up")
    cfg = StoreConfig(keyspace=KEYSPACE)
    drop_keyspace(cfg)
    create_schema(cfg)
    try:
        mesh.start(supervisor)
    except BaseException:
        mesh.stop(supervisor)
        raise
    (Path(run_dir) / "mesh.env").write_text(
        f"AUDITMESH_SDK_INGEST={mesh.ingest_target}\nAUDITMESH_SDK_QUERY={mesh.query_target}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
