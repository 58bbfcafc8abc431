"""Generate guard/protocol/proto/ from proto/inference.proto, or check that the committed code is current.

    python proto/generate.py           # rewrite guard/protocol/proto/inference_pb2{.py,.pyi,_grpc.py}
    python proto/generate.py --check   # exit 1 if the committed files differ from a fresh build

The generated messages are registered in a private descriptor pool instead of protobuf's default
one. Every KServe v2 binding (tritonclient, MLServer, KServe) registers the same message names
(`inference.ModelInferRequest`, ...) in the default pool, and protobuf refuses a second file that
defines them; a private pool lets the guard's code live in one process with any of them.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "proto" / "inference.proto"
PACKAGE_DIR = ROOT / "guard" / "protocol" / "proto"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")
# grpcio-tools 1.81.x is the last line whose generated code runs on protobuf 6, which
# tritonclient[grpc] still requires (protobuf<7).
TOOLS_LINE = "1.81."

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# A private pool: other KServe v2 bindings define the same names in the default one.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into out_dir and return the post-processed files by name."""
    import grpc_tools
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    version = getattr(grpc_tools, "__version__", None) or _tools_version()
    if not version.startswith(TOOLS_LINE):
        raise SystemExit(f"grpcio-tools {TOOLS_LINE}x is required, found {version}")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{include}",
        # Maps the file to guard/protocol/proto/ so generated imports read
        # `from guard.protocol.proto import ...`.
        f"-Iguard/protocol/proto={PROTO.parent}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"guard/protocol/proto/{PROTO.name}",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = {name: (out_dir / "guard" / "protocol" / "proto" / name).read_text() for name in OUTPUTS}
    pb2 = files["inference_pb2.py"]
    if pb2.count(_DEFAULT_POOL) != 1:
        raise SystemExit("unexpected protoc output: default-pool registration not found")
    files["inference_pb2.py"] = pb2.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return files


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def check() -> list[str]:
    """Return a unified diff for every committed file that differs from a fresh build."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    diffs = []
    for name, text in fresh.items():
        path = PACKAGE_DIR / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diffs.extend(
                difflib.unified_diff(
                    current.splitlines(), text.splitlines(), f"committed/{name}", f"fresh/{name}", lineterm=""
                )
            )
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    if args.check:
        diffs = check()
        if diffs:
            print("\n".join(diffs[:200]))
            print("guard/protocol/proto is stale: run `python proto/generate.py`", file=sys.stderr)
            return 1
        print("guard/protocol/proto is current")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (PACKAGE_DIR / name).write_text(text)
    print(f"wrote {', '.join(OUTPUTS)} to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
