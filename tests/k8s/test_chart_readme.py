"""helm/distilrec/README.md's parameter tables are what Bitnami's readme-generator-for-helm (npm; `make tools`)
makes of values.yaml's `## @param` comments: the generator also refuses a key without `@param` and an
`@param` without a key. Regenerate with `make chart-readme`."""

from __future__ import annotations

import re
import shutil

import yaml

from k8s_helpers import CHART, readme_generator, run


def test_committed_readme_tables_are_current(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(CHART / "README.md", readme)
    p = run([readme_generator(), "--values", str(CHART / "values.yaml"), "--readme", str(readme)], check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]  # e.g. "Missing metadata for key: …"
    assert readme.read_text() == (CHART / "README.md").read_text(), \
        "helm/distilrec/README.md is stale: run `make chart-readme`"


def test_every_values_leaf_has_its_param_line():
    """What the generator checks, without Node.js: every leaf of values.yaml (a scalar, an empty map or list,
    a list of strings) is named by one `## @param` line, and every `@param` names a leaf."""
    def leaves(node, path):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list) and node and not all(isinstance(e, str) for e in node):
            for i, v in enumerate(node):
                yield from leaves(v, f"{path}[{i}]")
        else:
            yield path

    text = (CHART / "values.yaml").read_text()
    params = re.findall(r"^\s*## @param (\S+)", text, re.M)
    assert len(params) == len(set(params)), "duplicate @param lines"
    assert set(params) == set(leaves(yaml.safe_load(text), "")), \
        set(params) ^ set(leaves(yaml.safe_load(text), ""))
