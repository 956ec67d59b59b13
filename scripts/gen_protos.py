"""Regenerate auditpb/ from protos/ (Python, gRPC and mypy stubs).

python scripts/gen_protos.py          rewrite auditpb/
python scripts/gen_protos.py --check  exit 1 if auditpb/ differs from what protos/ generates
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "auditpb"


def generate(dest: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={dest}",
        f"--mypy_grpc_out={dest}",
        *sources,
    ]
    subprocess.run(cmd, check=True)
    for package in [dest / "auditpb", *(p for p in (dest / "auditpb").rglob("*") if p.is_dir())]:
        (package / "__init__.py").touch()
        (package / "py.typed").touch()


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    out = [str(p) for p in files_a ^ files_b]
    out += [str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False)]
    return sorted(out)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "auditpb"
        if "--check" in sys.argv[1:]:
            stale = differences(fresh, OUT) if OUT.exists() else ["auditpb/ missing"]
            if stale:
                print("auditpb/ is stale; run scripts/gen_protos.py:", *stale, sep="\n  ")
                return 1
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(fresh, OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
